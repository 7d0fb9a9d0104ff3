"""Section e, two-worker row sum: two workers on halves of one array, against a bandwidth ideal.

Method: README.md, "e. Two-worker row sum".
"""

from __future__ import annotations

import gc
from typing import Any

import numpy as np

from shared_memory_array import SharedMemoryArray

from .config import Config
from .harness import HELD, MB, Workers, make_data, median, release_held, timed
from .peers import Peers
from .report import TIMES, Report, Section, fmt_ratio, fmt_time, markdown_table, method_link

# --------------------------------------------------------------------------- tasks (in workers)


def rowsum_task(handle: SharedMemoryArray[Any]) -> np.ndarray[Any, Any]:
    """Row sums of the rows a (region) handle covers."""
    sums: np.ndarray[Any, Any] = handle.as_array().sum(axis=1)
    return sums


def bandwidth_setup(nbytes: int) -> int:
    """In a worker: make and touch a private array for `bandwidth_sum`."""
    release_held()
    array = np.ones(nbytes // 8)
    HELD.append(array)
    return array.nbytes


def bandwidth_sum() -> float:
    """In a worker: ``np.sum`` over the private array from `bandwidth_setup`."""
    return float(np.sum(HELD[0]))


# --------------------------------------------------------------------------- the section


def run(config: Config, peers: Peers, ctx: Any, report: Report) -> None:
    """Section e: row sums with one process and with two, against a bandwidth ideal."""
    rows, columns = config.rowsum_shape
    half = rows // 2
    data = make_data(rows, columns)
    expected = data.sum(axis=1)
    shared = SharedMemoryArray.copy(None, data)
    del data
    gc.collect()
    one_samples: list[float] = []
    two_samples: list[float] = []
    bw_one: list[float] = []
    bw_two: list[float] = []
    try:
        with Workers(ctx, 2) as workers:
            top, bottom = shared[:half], shared[half:]

            def one() -> Any:
                return workers.call_each([(rowsum_task, (shared,))])[0]

            def two() -> Any:
                parts = workers.call_each([(rowsum_task, (top,)), (rowsum_task, (bottom,))])
                return np.concatenate(parts)

            for attempt in (one, two):  # warm-up: attach and map in both workers
                if not np.array_equal(attempt(), expected):
                    raise AssertionError("row sums differ")
            for _ in range(config.rowsum_reps):
                elapsed, sums = timed(one)
                one_samples.append(elapsed)
                elapsed, sums = timed(two)
                two_samples.append(elapsed)
                if not np.array_equal(sums, expected):
                    raise AssertionError("row sums differ")
            shared_nbytes = shared.nbytes
            workers.call_each([(release_held, ())] * 2)
            bw_bytes = config.bandwidth_mb * MB
            workers.call_each([(bandwidth_setup, (bw_bytes,))] * 2)
            workers.call_each([(bandwidth_sum, ())] * 2)  # warm-up
            for _ in range(config.rowsum_reps):
                bw_one.append(timed(lambda: workers.call_each([(bandwidth_sum, ())]))[0])
                bw_two.append(timed(lambda: workers.call_each([(bandwidth_sum, ())] * 2))[0])
    finally:
        shared.close()
    speedup = median(one_samples) / median(two_samples)
    ideal = 2 * median(bw_one) / median(bw_two)
    report.figures["rowsum"] = speedup / ideal
    gigabytes = shared_nbytes / 1e9
    bw_gb = config.bandwidth_mb * MB / 1e9
    table = [
        [
            f"row sums, 1 process, all {rows:,} rows",
            fmt_time(one_samples),
            f"{gigabytes / median(one_samples):.2f}",
            fmt_ratio(1.0),
        ],
        [
            f"row sums, 2 processes, {half:,} rows each (region handles)",
            fmt_time(two_samples),
            f"{gigabytes / median(two_samples):.2f}",
            fmt_ratio(speedup),
        ],
        [
            f"bandwidth: 1 process, np.sum of a private {config.bandwidth_mb} MB array",
            fmt_time(bw_one),
            f"{bw_gb / median(bw_one):.2f}",
            fmt_ratio(1.0),
        ],
        [
            f"bandwidth: 2 processes at once, {config.bandwidth_mb} MB each",
            fmt_time(bw_two),
            f"{2 * bw_gb / median(bw_two):.2f}",
            fmt_ratio(ideal),
        ],
    ]
    section = Section(
        "e. Two-worker row sum",
        [
            f"Row sums of a {rows:,} {TIMES} {columns:,} float64 array ({gigabytes:.1f} GB) "
            "in shared memory by one worker process, and by two each summing half the rows "
            f"through a region handle; {config.rowsum_reps} repetitions. The ideal is the "
            "bandwidth scaling of the same two processes. " + method_link("e-two-worker-row-sum")
        ],
    )
    section.tables.append(
        markdown_table(["run", "time", "GB/s read", "speedup / bandwidth scaling"], table)
    )
    section.notes.append(
        f"Speedup {fmt_ratio(speedup)} against a bandwidth ideal of {fmt_ratio(ideal)}: "
        f"{speedup / ideal:.2f} of the ideal."
    )
    if ideal < 1.2:
        section.notes.append(
            f"The bandwidth ideal is only {fmt_ratio(ideal)} on this machine: the row sum "
            "is bound by memory bandwidth here, so the target only checks that sharing "
            "costs nothing on top."
        )
    report.add(section)
