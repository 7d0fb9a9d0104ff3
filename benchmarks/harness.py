"""What every section measures with: data, names, timing, repetitions, PSS and worker processes.

- Data and names: `make_data` of ``(rows, 1000)`` float64 arrays, `rows_for` a size in
  MB, `first_column_sum` what tasks reading one element each return, `fresh_name` for
  every segment or file a run makes (all start ``smabench_``).
- Repetitions and timing: `rotated` interleaves methods repetition by repetition,
  `timed` and `per_iteration` time a call or a loop, `median` summarises samples.
- Memory: `pss_bytes` of a process, `shm_used` of ``/dev/shm``.
- Processes: `Workers`, a few processes where request ``i`` always runs in process
  ``i`` and keeps what it left in `HELD` until the parent has measured it.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import numpy as np

from shared_memory_array import release_cached_mappings

MB = 1_000_000
MIB = 1 << 20
SHM_DIR = "/dev/shm"
COLUMNS = 1000  # arrays are (rows, 1000) float64: 8 MB is 1000 rows

Cleanup = Callable[[], None]
T = TypeVar("T")

# --------------------------------------------------------------------------- data and names

_counter = itertools.count()


def fresh_name(kind: str) -> str:
    """Return a new segment or file name; every name a run makes starts ``smabench_``."""
    return f"smabench_{kind}_{os.getpid()}_{next(_counter)}"


def make_data(rows: int, columns: int = COLUMNS) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Return a touched ``(rows, columns)`` float64 array with distinct values (cheap to make)."""
    return np.arange(rows * columns, dtype=np.float64).reshape(rows, columns)


def rows_for(megabytes: int) -> int:
    """Rows of a ``(rows, 1000)`` float64 array of ``megabytes`` MB (10**6 bytes)."""
    return max(1, megabytes * MB // (8 * COLUMNS))


def first_column_sum(data: np.ndarray[Any, Any], count: int) -> float:
    """Exact sum of ``data[i % rows, 0]`` for ``i < count``: what ``count`` tasks that
    each read one element return, summed."""
    return math.fsum(data[np.arange(count) % data.shape[0], 0].tolist())


def unlink_all(paths: Sequence[str]) -> None:
    """Remove files, such as the ones ``joblib.dump`` wrote."""
    for path in paths:
        os.unlink(path)


# --------------------------------------------------------------------------- repetitions and timing


def rotated(items: Sequence[T], rep: int) -> list[T]:
    """``items`` rotated by ``rep``, so that no item always follows the same other one."""
    shift = rep % len(items)
    return [*items[shift:], *items[:shift]]


def median(values: Sequence[float]) -> float:
    """Median of samples (NaN for none)."""
    return statistics.median(values) if values else math.nan


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds that ``run()`` took, and what it returned."""
    start = time.perf_counter()
    value = run()
    return time.perf_counter() - start, value


def per_iteration(loop: Callable[[int], float | None], iterations: int) -> float:
    """Run ``loop(iterations)`` with the garbage collector off; seconds per iteration.

    A loop that needs untimed setup times itself and returns its elapsed seconds.
    """
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        inner = loop(iterations)
        elapsed = time.perf_counter() - start if inner is None else inner
        return elapsed / iterations
    finally:
        gc.enable()


# --------------------------------------------------------------------------- memory


def pss_bytes(pid: int) -> int:
    """Proportional set size of process ``pid``: a page shared by N processes counts 1/N."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss line for pid {pid}")


def shm_used() -> int:
    """Bytes in use in /dev/shm (by anyone: other processes' segments count too)."""
    stat = os.statvfs(SHM_DIR)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


# --------------------------------------------------------------------------- persistent workers

HELD: list[Any] = []  # objects a worker keeps alive until the parent has measured it
CLOSERS: list[Cleanup] = []  # run after HELD is emptied


def release_held() -> None:
    """In a worker: drop what `HELD` keeps, then close what needs closing."""
    HELD.clear()
    while CLOSERS:
        CLOSERS.pop()()
    release_cached_mappings()
    gc.collect()


def _serve(conn: Connection) -> None:
    """Worker loop of `Workers`: run ``(function, args)`` requests until ``None`` comes."""
    try:
        while True:
            request = conn.recv()
            if request is None:
                break
            function, args = request
            try:
                reply: tuple[str, Any] = ("ok", function(*args))
            except Exception as exc:  # sent back and raised in the parent
                reply = ("error", f"{type(exc).__name__}: {exc}")
            conn.send(reply)
    finally:
        release_held()
        conn.close()


class Workers:
    """A few processes that run functions on request, one process per request slot.

    Unlike a ``Pool``, request ``i`` always runs in process ``i``, and a process keeps
    what a request left in `HELD` until the parent has measured its memory.
    """

    def __init__(self, ctx: Any, count: int) -> None:
        self.processes: list[Any] = []
        self.conns: list[Connection] = []
        try:
            for _ in range(count):
                ours, theirs = ctx.Pipe()
                process = ctx.Process(target=_serve, args=(theirs,), daemon=True)
                process.start()
                theirs.close()
                self.processes.append(process)
                self.conns.append(ours)
            self.call_each([(os.getpid, ())] * count)  # all started and serving
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [process.pid for process in self.processes]

    def send(self, index: int, function: Callable[..., Any], *args: Any) -> None:
        """Ask worker ``index`` to run ``function(*args)``."""
        self.conns[index].send((function, args))

    def receive(self, index: int) -> Any:
        """Wait for worker ``index``'s answer."""
        status, value = self.conns[index].recv()
        if status != "ok":
            raise RuntimeError(f"worker {index} failed: {value}")
        return value

    def call_each(
        self, requests: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]
    ) -> list[Any]:
        """Send request ``i`` to worker ``i``, all at once, then gather the answers."""
        for index, (function, args) in enumerate(requests):
            self.send(index, function, *args)
        return [self.receive(index) for index in range(len(requests))]

    def close(self) -> None:
        """Stop every worker (asking first, then terminating stragglers)."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.terminate()
                process.join()
        for conn in self.conns:
            conn.close()
        self.processes, self.conns = [], []

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
