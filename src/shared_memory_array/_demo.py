"""The README's demo: hand a large array to a pool of workers by pickling, then by sharing."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable, TextIO

import numpy as np

from ._array import SharedMemoryArray

_MIB = 1024 * 1024


def _pss_bytes() -> int:
    """Proportional set size of this process: shared pages count 1/N in each of N mappers."""
    try:
        with open("/proc/self/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _sum_pickled(task: tuple[np.ndarray[Any, Any], int, int]) -> tuple[float, int, int]:
    array, start, stop = task
    return float(array[start:stop].sum()), os.getpid(), _pss_bytes()


def _sum_shared(task: tuple[SharedMemoryArray[Any], int, int]) -> tuple[float, int, int]:
    shared, start, stop = task
    array = shared.as_array()
    return float(array[start:stop].sum()), os.getpid(), _pss_bytes()


def _progress(results: Iterator[Any], total: int, label: str) -> Iterable[Any]:
    try:
        from tqdm import tqdm
    except ImportError:
        return results
    # disable=None: a bar on a terminal, nothing when stderr is a file or pipe
    return tqdm(results, total=total, desc=label, leave=False, disable=None)  # type: ignore[no-any-return]


def _run(
    pool: Any,
    function: Callable[[Any], tuple[float, int, int]],
    tasks: list[Any],
    label: str,
) -> tuple[float, int]:
    """Run ``tasks``; return the total and the peak memory of the workers."""
    worker_peak: dict[int, int] = {}
    total = 0.0
    for value, pid, pss in _progress(pool.imap(function, tasks), len(tasks), label):
        total += value
        worker_peak[pid] = max(pss, worker_peak.get(pid, 0))
    return total, sum(worker_peak.values())


def run(size_mb: int = 128, workers: int = 2, out: TextIO | None = None) -> dict[str, Any]:
    """Run the demo and print a comparison; return the figures.

    Both ways hand every task the whole array, as code that passes arrays to
    ``Pool.map`` does; each task sums its block of rows.
    """
    rows = max(workers * 2, size_mb * _MIB // (1024 * 8))
    data = np.random.default_rng(0).random((rows, 1024))
    n_tasks = workers * 2
    bounds = np.linspace(0, rows, n_tasks + 1).astype(int)
    blocks = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
    figures: dict[str, Any] = {"array_bytes": data.nbytes, "workers": workers}

    with multiprocessing.Pool(workers) as pool:
        pool.map(abs, range(workers))  # start the workers before timing
        start = time.perf_counter()
        pickled_total, pickled_workers = _run(
            pool, _sum_pickled, [(data, a, b) for a, b in blocks], "pickling"
        )
        figures["pickle_seconds"] = time.perf_counter() - start
        figures["pickle_memory"] = _pss_bytes() + pickled_workers

    with multiprocessing.Pool(workers) as pool:
        pool.map(abs, range(workers))
        start = time.perf_counter()
        with SharedMemoryArray.copy(None, data) as shared:
            shared_total, shared_workers = _run(
                pool, _sum_shared, [(shared, a, b) for a, b in blocks], "sharing"
            )
            figures["shared_seconds"] = time.perf_counter() - start
            figures["shared_memory"] = _pss_bytes() + shared_workers

    figures["same_result"] = bool(np.isclose(pickled_total, shared_total))
    _report(figures, n_tasks, out)
    return figures


def _report(figures: dict[str, Any], n_tasks: int, out: TextIO | None) -> None:
    def mib(value: int) -> str:
        return f"{value / _MIB:,.0f} MiB" if value else "n/a"

    lines = [
        f"shared-memory-array demo: {figures['workers']} workers sum {n_tasks} row blocks "
        f"of a {figures['array_bytes'] / _MIB:,.0f} MiB float64 array",
        "",
        f"  {'way':<28}{'time':>9}   total memory (PSS of parent + workers)",
        f"  {'pickle the array per task':<28}{figures['pickle_seconds']:>7.2f} s"
        f"   {mib(figures['pickle_memory'])}",
        f"  {'SharedMemoryArray':<28}{figures['shared_seconds']:>7.2f} s"
        f"   {mib(figures['shared_memory'])}",
        "",
        f"Same results: {'yes' if figures['same_result'] else 'NO'}. Sharing was "
        f"{figures['pickle_seconds'] / figures['shared_seconds']:.1f}x faster.",
    ]
    print("\n".join(lines), file=out)
