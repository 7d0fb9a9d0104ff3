"""Functions the tests run in other processes (importable by name, for spawn and forkserver).

A process started by spawn or forkserver imports the module of each function it is
sent.  Here, that costs it NumPy and this library, which it needs anyway; from a test
module it would also cost pytest (about 0.2 s of CPU for each process).  So the
functions that pools, Dask workers and the like run live here, not beside the tests.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing import resource_tracker
from typing import Any

import numpy as np

from shared_memory_array import LockTimeoutError, SharedMemoryArray

SHM = "/dev/shm"

# Dask's log format: "2026-01-02 03:04:05,678 - distributed.worker - INFO - message"
LOG_RECORD_START = re.compile(r"(?m)^(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - )")
LOG_RECORD = re.compile(r"\S+ \S+ - (?P<logger>\S+) - (?P<level>[A-Z]+) - (?P<message>.*)")


def raw_name() -> str:
    """A name for a segment a test makes without this library (the leak check knows it)."""
    return f"test_{os.getpid()}_{secrets.token_hex(4)}"


def total(handle: SharedMemoryArray[Any]) -> float:
    return float(handle.as_array().sum())


def row_sum(args: tuple[SharedMemoryArray[Any], int]) -> float:
    handle, row = args
    return float(handle.as_array()[row].sum())


def write(handle: SharedMemoryArray[Any], index: int, value: float) -> None:
    handle.as_array().flat[index] = value
    handle.close()


def tracker_messages(handle: SharedMemoryArray[Any]) -> list[tuple[str, str]]:
    """Use ``handle`` (unpickled here), attach again; return what reached the resource tracker."""
    sent: list[tuple[str, str]] = []
    tracker = resource_tracker._resource_tracker  # type: ignore[attr-defined]
    original = tracker._send

    def spy(cmd: str, name: str, rtype: str) -> None:
        sent.append((cmd, name))
        original(cmd, name, rtype)

    tracker._send = spy
    try:
        handle.as_array()[0] += 1
        again = SharedMemoryArray.attach(handle.name)
        again.as_array()[0] += 1
        again.close()
        handle.close()
    finally:
        del tracker._send
    return sent


def owner_facts(handle: SharedMemoryArray[Any]) -> tuple[bool, bool]:
    """In a child: (is the unpickled handle an owner, does unlink refuse)."""
    try:
        handle.unlink()
    except PermissionError:
        refused = True
    else:
        refused = False
    owner = handle.owner
    handle.close()
    return owner, refused


def sum_in_place(array: np.ndarray[Any, Any]) -> float:
    return float(array.sum())


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a separately started interpreter, capturing its output."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def with_private_dev_shm(options: str, *command: str) -> list[str]:
    """``command`` run in a mount namespace of its own with a new tmpfs on /dev/shm
    (``options`` as for ``mount -o``, e.g. ``size=16m``); needs root and ``unshare``."""
    mount = f'mount -t tmpfs -o {options} tmpfs /dev/shm && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh", *command]


def log_records(stderr: str) -> list[str]:
    """Split what a Dask process printed into its log records (with their tracebacks)."""
    return [chunk for chunk in LOG_RECORD_START.split(stderr) if chunk.strip()]


def is_dask_heartbeat_race(record: str) -> bool:
    """Whether ``record`` is the error Dask's own worker shutdown sometimes logs.

    A worker closing its connections while its heartbeat to the scheduler is in
    flight logs "Failed to communicate with scheduler during heartbeat" with a
    CommClosedError (dask/distributed#7105).  It comes from Dask, with or without
    this library: here 2 runs in 25 of a LocalCluster doing only scatter logged it.
    """
    lines = record.strip().splitlines()
    found = LOG_RECORD.match(lines[0])
    return (
        found is not None
        and found["logger"] == "distributed.worker"
        and found["message"] == "Failed to communicate with scheduler during heartbeat."
        and lines[-1].startswith("distributed.comm.core.CommClosedError: ")
    )


def without_dask_heartbeat_races(stderr: str) -> str:
    """``stderr`` without the log records `is_dask_heartbeat_race` tells apart."""
    return "".join(record for record in log_records(stderr) if not is_dask_heartbeat_race(record))


# --- test_executors.py


def row_total(shared: SharedMemoryArray, row: int) -> float:
    return float(shared.as_array()[row].sum())


def row_total_packed(args: tuple[SharedMemoryArray, int]) -> float:
    return row_total(*args)


def write_row(shared: SharedMemoryArray, row: int) -> int:
    shared.as_array()[row] = row
    return os.getpid()


def spool_files(shared: SharedMemoryArray, folder: str) -> list[str]:
    """Run inside a joblib task: what joblib wrote to its memmapping folder."""
    shared.as_array()
    return [name for _, _, names in os.walk(folder) for name in names]


# --- test_transfer.py


def made_in_worker(value: int, backend: str = "named") -> SharedMemoryArray:
    """A pool task: make an array with no manager and hand it to the caller."""
    out = SharedMemoryArray.allocate(None, (1000,), np.int64, backend=backend)
    out.as_array()[:] = value
    return out.transfer()


def made_in_worker_memfd(value: int) -> SharedMemoryArray:
    """`made_in_worker`, with a memfd segment."""
    return made_in_worker(value, "memfd")


def memfd_labels(pid: int | str = "self") -> list[str]:
    """The memfd segments process ``pid`` holds a descriptor of."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:sma_"):
            found.append(target)
    return found


def memfd_handovers_settled(timeout: float | None = None) -> None:
    """Wait until this process has let go of the memfd segments it handed over
    (``transfer()``, a drop-in executor's result) and that were claimed: a thread
    closes the sender's descriptor within milliseconds of the claim, and ends when
    nothing is left in flight."""
    for thread in threading.enumerate():
        if thread.name == "shared-memory-array-handover":
            thread.join(timeout)


def settled_memfd_labels() -> list[str]:
    """`memfd_labels` once `memfd_handovers_settled`."""
    memfd_handovers_settled()
    return memfd_labels()


def in_memfd(array: np.ndarray) -> bool:
    """Whether ``array``'s memory lies in a memfd segment's mapping (Linux)."""
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = (int(part, 16) for part in line.split()[0].split("-"))
            if start <= address < end:
                return "/memfd:sma_" in line
    return False


def twice_and_where(array: np.ndarray) -> tuple[np.ndarray, bool]:
    """A drop-in executor's task: the array doubled, and whether it arrived in a memfd."""
    return array * 2, in_memfd(array)


# --- test_readonly.py


def try_write(handle: SharedMemoryArray) -> str:
    array = handle.as_array()
    try:
        array[0] = 1
    except ValueError as error:
        message = str(error)
    else:
        return "wrote"
    try:
        array.flags.writeable = True
    except ValueError:
        return message
    return "made writeable"


# --- test_regions.py


def fill_region(region: SharedMemoryArray[Any], value: int) -> None:
    region.as_array()[...] = value


# --- test_locks.py


def try_lock(handle: SharedMemoryArray, shared: bool = False, rows=None) -> bool:
    """In a child: can the lock be taken right now?"""
    try:
        with handle.lock(shared=shared, blocking=False, rows=rows):
            return True
    except LockTimeoutError:
        return False


# --- test_dropin_executors.py


BIG = 1 << 20  # the default min_bytes


def big(fill: float = 1.0) -> np.ndarray:
    return np.full(BIG // 8, fill)


def mapped_segments(pid: int | str = "self") -> list[str]:
    """The library's named segments process ``pid`` maps now, once per mapping."""
    with open(f"/proc/{pid}/maps") as maps:
        return [line.split(SHM + "/", 1)[1].split()[0] for line in maps if SHM + "/sma_" in line]


def segments_mapped_here(array: np.ndarray | None = None) -> list[str]:
    """A task that writes to all of its argument, if any, and returns
    `mapped_segments` in the worker that runs it."""
    if array is not None:
        array[:] = -1.0
    return mapped_segments()


def write_then_fail_or_list(item: tuple[np.ndarray, bool]) -> list[str]:
    """`segments_mapped_here` for ``(array, fail)``, which raises instead once
    it has written to all of the array, if told to."""
    array, fail = item
    mapped = segments_mapped_here(array)
    if fail:
        raise ValueError("failed on purpose")
    return mapped


def mark_then_fail(item: tuple[str, int, object]) -> int:
    """Leave a file named ``i`` in ``directory``, then raise if ``i % 8`` is 3."""
    directory, i, _argument = item
    open(os.path.join(directory, str(i)), "w").close()
    if i % 8 == 3:
        raise ValueError(f"failed on purpose at {i}")
    return i


def written_kib(pid: int, name: str) -> list[int]:
    """The KiB each of process ``pid``'s mappings of segment ``name`` holds of its
    own: the pages it wrote to a private (copy-on-write) mapping."""
    found, inside = [], False
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            if line[:1] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:  # a mapping
                inside = f"{SHM}/{name}" in line
            elif inside and line.startswith("Anonymous:"):
                found.append(int(line.split()[1]))
    return found


_kept_by_tasks: list[np.ndarray] = []


def in_steps(step: str, array: np.ndarray) -> tuple[float, ...]:
    """A task that keeps its argument after writing to its first element ("keep"),
    writes to all of it ("scribble"), or only looks; returns the sums of its
    argument and of every argument kept so far in this worker."""
    if step == "keep":
        array[0] = 5.0
        _kept_by_tasks.append(array)
    elif step == "scribble":
        array[:] = -1.0
    return (float(array.sum()), *(float(kept.sum()) for kept in _kept_by_tasks))


def scribble(array: np.ndarray) -> tuple[float, float]:
    """A task that writes to its argument: returns its sum before, and after."""
    before = float(array.sum())
    array[:] = -1
    return before, float(array.sum())


def describe(*args, **kwargs):
    """What a task was given: types, shapes, flags, and whether arrays are shared memory."""

    def facts(value):
        if isinstance(value, np.ndarray):
            total = None if value.dtype.hasobject else float(value.sum())
            fortran = value.flags.f_contiguous and not value.flags.c_contiguous
            return (type(value).__name__, value.shape, fortran, total)
        if isinstance(value, (list, tuple)):
            return [facts(item) for item in value]
        if isinstance(value, dict):
            return {key: facts(item) for key, item in value.items()}
        return value

    return facts(args), facts(kwargs), sorted(set(mapped_segments()))


def twice(array: np.ndarray) -> np.ndarray:
    return array * 2


def made_and_transferred(value: float) -> tuple[SharedMemoryArray, int]:
    """A drop-in pool task: a large array made in shared memory, handed over with
    `transfer()`, and the inode of the file it was made in."""
    out = SharedMemoryArray.allocate(None, (BIG // 8,), np.float64)
    out.as_array()[:] = value
    inode = os.stat(os.path.join("/dev/shm", out.name)).st_ino
    return out.transfer(), inode


def nested_result(n: int) -> dict:
    return {"big": [np.full(BIG // 8, n), (np.arange(3), "label")], "n": n}


def kill_self(_: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def own_then_die(_: object) -> None:
    """A worker killed with a segment of its own, registered for crash cleanup."""
    kept = SharedMemoryArray.copy(None, big())
    os.kill(os.getpid(), signal.SIGKILL)
    kept.close()  # never reached


def own_then_die_on_the_second(item: int, path: str) -> int:
    """A task: the second item's worker is killed with a segment of its own, whose
    name it writes to ``path`` first."""
    if item == 1:
        kept = SharedMemoryArray.copy(None, big())
        with open(path + ".part", "w") as file:
            file.write(kept.name)
        os.rename(path + ".part", path)  # never seen half written
        os.kill(os.getpid(), signal.SIGKILL)
    return item


def fail(array: np.ndarray) -> None:
    raise ValueError(f"task saw {array.size} elements")


def slow(array: np.ndarray, seconds: float) -> float:
    time.sleep(seconds)
    return float(array[0])


def started_then_slow(array: np.ndarray, marker: str) -> float:
    """A task that says it has started, then takes long."""
    open(marker, "w").close()
    return slow(array, 30)


def wait_for_file(item: object, path: str) -> object:
    """A task that waits until ``path`` exists (a minute at most), then returns ``item``."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return item


def unpicklable(array: np.ndarray) -> object:
    return lambda: array.size  # a result pickle refuses


class Counter:
    """A task function with state: how many times this copy of it was called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, _item: object) -> int:
        self.calls += 1
        return self.calls


def worker_pid(_item: object) -> int:
    """A task that returns the pid of the worker that runs it."""
    return os.getpid()


def loaded_here(_item: object) -> int:
    """A task that returns how many pickled-once objects its worker has loaded."""
    from shared_memory_array import _offload

    return len(_offload._loaded)


def add_one_to_first(first: np.ndarray, second: np.ndarray) -> tuple[bool, float]:
    first += 1
    return first is second, float(second[0])


def twice_the_same(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return array, array


# --- test_dask.py: tasks for Dask workers


def read(published: Any) -> tuple[float, bool, int]:
    view = published.as_array()
    return float(view.sum()), bool(view.flags.writeable), os.getpid()


def read_and_keep(published: Any, dask_worker: Any) -> int:
    """Touch every page of this host's copy and keep the view mapped in the worker."""
    view = published.as_array()
    float(view.sum())
    dask_worker._kept_view = view
    return os.getpid()


def drop_kept(dask_worker: Any) -> None:
    del dask_worker._kept_view


def pss_bytes() -> int:
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no Pss line")


def identity(value: Any) -> Any:
    return value


def pretend_to_run_on(host: str) -> None:
    """Make this worker see ``host`` as its host, as if it ran on a host added later.

    The Dask layer asks `host_key` only through `_dask_fetch.host_here`.
    """
    from shared_memory_array import _dask_fetch  # imports distributed: a Dask worker has it

    _dask_fetch.host_key = lambda: host


def release_before_linking(name: str) -> None:
    """Make this worker's next late copy see ``release()`` run between fetch and link."""
    from shared_memory_array import _hostcopy  # a Dask worker has it

    make = _hostcopy.create_once

    def released_meanwhile(*args: Any) -> Any:
        _hostcopy.release(name, None)
        return make(*args)

    _hostcopy.create_once = released_meanwhile
