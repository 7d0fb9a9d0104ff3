"""Section c, attach: what it costs a process that owns no segment to map one, cold and warm.

`attach_timings` runs in a child process; each method of `AttachLoops` is one row.
Method: README.md, "c. Attach".
"""

from __future__ import annotations

import _posixshmem
import mmap
import os
import pickle
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from shared_memory_array import SharedMemoryArray, release_cached_mappings

from .config import Config
from .harness import fresh_name, make_data, median, per_iteration, rows_for
from .peers import Peers
from .report import MICRO, TIMES, Report, Section, fmt_range, fmt_ratio, markdown_table, method_link

FLOOR = "raw floor: shm_open + fstat + mmap + close; munmap"
COLD = "**ours** cold: release_cached_mappings(); attach(name).as_array(); close()"
MEMFD_COLD = "**ours** cold, memfd segment: the same"
OTHERS = 8  # small segments cached in the child for the "crowded cache" row

Loop = Callable[[int], "float | None"]


class AttachLoops:
    """The loops timed in section c, each ``loop(n)`` doing ``n`` iterations.

    Used in a process that owns neither segment.  A loop that needs untimed setup
    returns its own elapsed seconds (see `per_iteration`).
    """

    def __init__(
        self, our_name: str, std_name: str, payload: bytes, others: list[str], memfd_name: str
    ) -> None:
        self.our_name = our_name
        self.memfd_name = memfd_name
        _, pid, fd, _ = memfd_name.split("_")  # sma_<pid>_fd<n>_<hex>
        self.memfd_path = f"/proc/{pid}/fd/{fd[2:]}"
        self.raw_path = "/" + our_name
        self.std_name = std_name
        self.payload = payload
        self.others = others
        self.task = pickle.loads(payload)

    def raw_floor(self, n: int) -> None:
        """shm_open + fstat + mmap + close, then munmap."""
        for _ in range(n):
            fd = _posixshmem.shm_open(self.raw_path, os.O_RDWR, 0o600)
            size = os.fstat(fd).st_size
            region = mmap.mmap(fd, size)
            os.close(fd)
            region.close()

    def raw_floor_view(self, n: int) -> None:
        """The raw floor with an ndarray made over the mapping."""
        for _ in range(n):
            fd = _posixshmem.shm_open(self.raw_path, os.O_RDWR, 0o600)
            size = os.fstat(fd).st_size
            region = mmap.mmap(fd, size)
            os.close(fd)
            view = np.frombuffer(region, dtype=np.uint8)
            del view
            region.close()

    def ours_cold(self, n: int, name: str | None = None) -> None:
        """Attach by name (ours, or ``name``) with nothing cached."""
        for _ in range(n):
            release_cached_mappings()
            handle = SharedMemoryArray.attach(name or self.our_name)
            array = handle.as_array()
            del array
            handle.close()
        release_cached_mappings()

    def memfd_floor(self, n: int) -> None:
        """A memfd's floor: open /proc/<pid>/fd/<n> + fstat + mmap + close, then munmap."""
        for _ in range(n):
            fd = os.open(self.memfd_path, os.O_RDWR)
            size = os.fstat(fd).st_size
            region = mmap.mmap(fd, size)
            os.close(fd)
            region.close()

    def ours_cold_memfd(self, n: int) -> None:
        """Attach a memfd segment by name with nothing cached."""
        self.ours_cold(n, self.memfd_name)

    def ours_cold_unsafe(self, n: int) -> None:
        """``attach_unsafe`` (no argument normalisation or header comparison), nothing cached."""
        for _ in range(n):
            release_cached_mappings()
            handle = SharedMemoryArray.attach_unsafe(self.our_name)
            array = handle.as_array()
            del array
            handle.close()
        release_cached_mappings()

    def ours_cold_pickle(self, n: int) -> None:
        """Unpickle a handle and map it, with nothing cached: a worker's first task."""
        for _ in range(n):
            release_cached_mappings()
            array = pickle.loads(self.payload).as_array()
            del array
        release_cached_mappings()

    def stdlib_attach(self, n: int) -> None:
        """``SharedMemory(name)`` (registers with the resource tracker), a view, close."""
        for _ in range(n):
            shm = shared_memory.SharedMemory(self.std_name)
            array = np.frombuffer(shm.buf, dtype=np.uint8)  # type: ignore[arg-type]
            del array
            shm.close()

    def ours_warm(self, n: int) -> None:
        """Attach by name while the cache holds the mapping."""
        keep = SharedMemoryArray.attach(self.our_name)
        for _ in range(n):
            handle = SharedMemoryArray.attach(self.our_name)
            array = handle.as_array()
            del array
            handle.close()
        keep.close()

    def ours_warm_pickle(self, n: int) -> None:
        """Unpickle and map while the cache holds the mapping: a worker's later tasks."""
        keep = SharedMemoryArray.attach(self.our_name)
        for _ in range(n):
            array = pickle.loads(self.payload).as_array()
            del array
        keep.close()

    def ours_warm_pickle_crowded(self, n: int) -> float:
        """As `ours_warm_pickle`, with other segments also cached here (self-timed)."""
        keep = [SharedMemoryArray.attach(name) for name in [self.our_name, *self.others]]
        start = time.perf_counter()
        for _ in range(n):
            array = pickle.loads(self.payload).as_array()
            del array
        elapsed = time.perf_counter() - start
        for handle in keep:
            handle.close()
        release_cached_mappings()
        return elapsed

    def loads_only(self, n: int) -> None:
        """Unpickling a handle alone."""
        for _ in range(n):
            pickle.loads(self.payload)

    def first_as_array(self, n: int) -> float:
        """The first ``as_array()`` of freshly unpickled handles, cache warm (self-timed)."""
        keep = SharedMemoryArray.attach(self.our_name)
        handles = [pickle.loads(self.payload) for _ in range(n)]
        start = time.perf_counter()
        for handle in handles:
            handle.as_array()
        elapsed = time.perf_counter() - start
        keep.close()
        return elapsed

    def dumps_task(self, n: int) -> None:
        """Pickling a ``(handle, i)`` task, as the parent does per task."""
        for i in range(n):
            pickle.dumps((self.task, i))

    def dumps_int(self, n: int) -> None:
        """Pickling an int task, for comparison."""
        for i in range(n):
            pickle.dumps(i)


def attach_timings(
    our_name: str,
    std_name: str,
    payload: bytes,
    others: list[str],
    counts: tuple[int, int, int],
    memfd_name: str,
) -> dict[str, list[float]]:
    """In a process that owns neither segment: seconds per iteration of each loop.

    ``counts`` is (cold iterations, warm iterations, repetitions).
    """
    iters, warm_iters, reps = counts
    release_cached_mappings()  # a fork()ed child starts with its parent's cache
    loops = AttachLoops(our_name, std_name, payload, others, memfd_name)
    cold: list[tuple[str, Loop]] = [
        (FLOOR, loops.raw_floor),
        ("raw floor + np.frombuffer view", loops.raw_floor_view),
        (COLD, loops.ours_cold),
        ("**ours** cold: the same with attach_unsafe(name)", loops.ours_cold_unsafe),
        (
            "**ours** cold: release_cached_mappings(); pickle.loads(payload).as_array()",
            loops.ours_cold_pickle,
        ),
        ("stdlib: SharedMemory(name) + np.frombuffer view; close()", loops.stdlib_attach),
        (MEMFD_COLD, loops.ours_cold_memfd),
        ("memfd floor: open /proc/<pid>/fd/<n> + fstat + mmap + close; munmap", loops.memfd_floor),
    ]
    warm: list[tuple[str, Loop]] = [
        ("**ours** warm: attach(name).as_array(); close()", loops.ours_warm),
        ("**ours** warm: pickle.loads(payload).as_array()", loops.ours_warm_pickle),
        (
            f"**ours** warm: the same, {len(others)} other segments also cached here",
            loops.ours_warm_pickle_crowded,
        ),
        ("pieces: pickle.loads(payload) alone", loops.loads_only),
        ("pieces: first as_array() of an unpickled handle (warm cache)", loops.first_as_array),
        ("pieces: pickle.dumps((handle, i))", loops.dumps_task),
        ("pieces: pickle.dumps(i)", loops.dumps_int),
    ]
    samples: dict[str, list[float]] = {}
    for _label, loop in cold + warm:  # warm-up
        loop(max(10, iters // 10))
    for _ in range(reps):
        for label, loop in cold:
            samples.setdefault(label, []).append(per_iteration(loop, iters))
        for label, loop in warm:
            samples.setdefault(label, []).append(per_iteration(loop, warm_iters))
    return samples


def run(config: Config, peers: Peers, ctx: Any, report: Report) -> None:
    """Section c: cold and warm attach cost in a process that does not own the segment."""
    data = make_data(rows_for(config.attach_mb))
    ours = SharedMemoryArray.copy(None, data)
    # The stdlib segment registers with the resource tracker, which the child shares:
    # the child's attaches re-register the same name (a set), and this process's
    # unlink() unregisters it, so nothing is unlinked early or reported as leaked.
    std = shared_memory.SharedMemory(name=fresh_name("std"), create=True, size=ours.nbytes)
    others = [SharedMemoryArray.copy(None, np.zeros(16)) for _ in range(OTHERS)]
    memfd = SharedMemoryArray.copy(None, data, backend="memfd")
    try:
        with ctx.Pool(1) as pool:
            samples = pool.apply(
                attach_timings,
                (
                    ours.name,
                    std.name,
                    pickle.dumps(ours),
                    [other.name for other in others],
                    (config.attach_iters, config.attach_warm_iters, config.attach_reps),
                    memfd.name,
                ),
            )
    finally:
        for other in others:
            other.close()
        memfd.close()
        ours.close()
        std.close()
        std.unlink()
    floor = median(samples[FLOOR])
    report.figures["cold_attach"] = median(samples[COLD]) / floor
    report.figures["memfd_cold_attach"] = median(samples[MEMFD_COLD]) / median(samples[COLD])
    rows = [
        [label, fmt_range(values, "", 1e6), fmt_ratio(median(values) / floor)]
        for label, values in samples.items()
    ]
    section = Section(
        "c. Attach",
        [
            f"A {config.attach_mb} MB segment, in a child process that owns no segment "
            f"({ctx.get_start_method()} start method); {config.attach_reps} repetitions of "
            f"{config.attach_iters:,} iterations (cold rows) or {config.attach_warm_iters:,} "
            "(warm rows and pieces). " + method_link("c-attach")
        ],
    )
    section.tables.append(
        markdown_table(["operation", f"{MICRO}s per iteration", f"{TIMES} raw floor"], rows)
    )
    section.notes.append(
        f"`payload` is `pickle.dumps(handle)` ({len(pickle.dumps(ours))} bytes), as a pool "
        "ships it."
    )
    report.add(section)
