"""Section b, per-task hand-off: what it costs a ``Pool.map`` task to receive the array.

The ``task_*`` functions run in the pool's workers, one per way of handing the
array over; each reads one element, so the result can be checked.  Method:
README.md, "b. Per-task hand-off".
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

from shared_memory_array import SharedMemoryArray

from .config import Config
from .harness import (
    COLUMNS,
    SHM_DIR,
    Cleanup,
    first_column_sum,
    fresh_name,
    make_data,
    median,
    rotated,
    rows_for,
    unlink_all,
)
from .peers import NOT_INSTALLED, Peers
from .report import (
    DASH,
    MICRO,
    TIMES,
    Report,
    Section,
    fmt_range,
    fmt_ratio,
    markdown_table,
    method_link,
)

NOTHING = "passing nothing (task = an int)"
OURS = "**ours**: (handle, i)"
OURS_MEMFD = "**ours**, memfd segment: (handle, i)"
SHAREDARRAY = "SharedArray: attach per task"
JOBLIB = "joblib: load(mmap_mode='r') per task"
TORCH = "torch: shared tensor"
CHUNKSIZES: tuple[int | None, ...] = (1, None)  # None: Pool.map's default

# --------------------------------------------------------------------------- tasks (in workers)


def task_nothing(i: int) -> float:
    """Hand-off task that receives an int and reads no array."""
    return float(i)


def task_ours(task: tuple[SharedMemoryArray[Any], int]) -> float:
    """Hand-off task: our handle, attached (or found in the cache) and read once."""
    handle, i = task
    array = handle.as_array()
    return float(array[i % array.shape[0], 0])


def task_handle_unused(task: tuple[object, int]) -> float:
    """Hand-off task that receives our handle (or another object) but never uses it:
    the transport cost alone."""
    _handle, i = task
    return float(i)


def by_call(packed: bytes) -> bytes:
    """What a `ByCall` unpickles to: its bytes."""
    return packed


class ByCall:
    """An object pickled as a call of a module's function with one bytes argument, as
    our handle is (and built once, as its is): what passing any object by reference
    costs, without our code."""

    def __init__(self, packed: bytes) -> None:
        self.packed = packed
        self.reduced = (by_call, (packed,))

    def __reduce__(self) -> tuple[Any, ...]:
        return self.reduced


def task_stdlib(task: tuple[str, tuple[int, ...], str, int]) -> float:
    """Hand-off task: attach a stdlib SharedMemory by name, read one element, close."""
    name, shape, dtype, i = task
    shm = shared_memory.SharedMemory(name)
    try:
        array: np.ndarray[Any, Any] = np.ndarray(shape, dtype, buffer=shm.buf)
        value = float(array[i % shape[0], 0])
        del array
    finally:
        shm.close()
    return value


def task_sharedarray(task: tuple[str, int]) -> float:
    """Hand-off task: ``SharedArray.attach`` by name and read one element."""
    import SharedArray

    name, i = task
    array = SharedArray.attach("shm://" + name)
    return float(array[i % array.shape[0], 0])


def task_joblib(task: tuple[str, int]) -> float:
    """Hand-off task: ``joblib.load(path, mmap_mode='r')`` and read one element."""
    import joblib

    path, i = task
    array = joblib.load(path, mmap_mode="r")
    return float(array[i % array.shape[0], 0])


def task_pickled(task: tuple[np.ndarray[Any, Any], int]) -> float:
    """Hand-off task: the whole array arrives pickled with the task."""
    array, i = task
    return float(array[i % array.shape[0], 0])


def task_torch(task: tuple[Any, int]) -> float:
    """Hand-off task: a shared torch tensor (its storage passed as a file descriptor)."""
    tensor, i = task
    array = tensor.numpy()
    return float(array[i % array.shape[0], 0])


# --------------------------------------------------------------------------- rows (in the parent)


@dataclass
class HandoffRow:
    """One way of handing the array to the pool's tasks."""

    label: str
    function: Callable[[Any], float] | None
    tasks: list[Any]
    expected: float
    target: bool = False  # a row of the targets: repeated more against the noise


def _peer_rows(
    config: Config, peers: Peers, data: np.ndarray[Any, Any], cleanups: list[Cleanup]
) -> list[HandoffRow]:
    """The optional peers' hand-off rows (a row without a function for each missing one)."""
    count = config.handoff_tasks
    rows: list[HandoffRow] = []
    sharedarray = peers.get("SharedArray")
    if sharedarray is None:
        rows.append(HandoffRow(SHAREDARRAY, None, [], 0.0))
    else:
        name = fresh_name("sa")
        view = sharedarray.create("shm://" + name, data.shape, data.dtype)
        view[...] = data
        del view
        cleanups.append(lambda: sharedarray.delete("shm://" + name))
        rows.append(
            HandoffRow(
                SHAREDARRAY,
                task_sharedarray,
                [(name, i) for i in range(count)],
                first_column_sum(data, count),
            )
        )
    joblib = peers.get("joblib")
    if joblib is None:
        rows.append(HandoffRow(JOBLIB, None, [], 0.0))
    else:
        path = os.path.join(SHM_DIR, fresh_name("joblib") + ".joblib")
        written = joblib.dump(data, path)
        cleanups.append(lambda: unlink_all(written))
        rows.append(
            HandoffRow(
                JOBLIB,
                task_joblib,
                [(path, i) for i in range(count)],
                first_column_sum(data, count),
            )
        )
    torch = peers.get("torch")
    torch_count = config.handoff_torch_tasks
    if torch is None:
        rows.append(HandoffRow(TORCH, None, [], 0.0))
    else:
        tensor = torch.from_numpy(data).share_memory_()
        rows.append(
            HandoffRow(
                f"{TORCH} ({torch_count} tasks)",
                task_torch,
                [(tensor, i) for i in range(torch_count)],
                first_column_sum(data, torch_count),
            )
        )
    return rows


def _rows(
    config: Config, peers: Peers, data: np.ndarray[Any, Any], cleanups: list[Cleanup]
) -> list[HandoffRow]:
    """Build every row's shared object and task list (the parent's setup, not timed)."""
    count = config.handoff_tasks
    rows = [
        HandoffRow(
            NOTHING,
            task_nothing,
            list(range(count)),
            math.fsum(float(i) for i in range(count)),
        )
    ]
    handle = SharedMemoryArray.copy(None, data)
    cleanups.append(handle.close)
    rows.append(
        HandoffRow(
            OURS,
            task_ours,
            [(handle, i) for i in range(count)],
            first_column_sum(data, count),
        )
    )
    memfd = SharedMemoryArray.copy(None, data, backend="memfd")
    cleanups.append(memfd.close)
    rows.append(
        HandoffRow(
            OURS_MEMFD,
            task_ours,
            [(memfd, i) for i in range(count)],
            first_column_sum(data, count),
        )
    )
    rows.append(
        HandoffRow(
            "ours, handle sent but never mapped: (handle, i)",
            task_handle_unused,
            [(handle, i) for i in range(count)],
            math.fsum(float(i) for i in range(count)),
        )
    )
    marker = ByCall(handle.__reduce__()[1][0])  # one object for all tasks, as the handle
    rows.append(
        HandoffRow(
            f"any object pickled as a call: ({len(marker.packed)} bytes to a function, i)",
            task_handle_unused,
            [(marker, i) for i in range(count)],
            math.fsum(float(i) for i in range(count)),
        )
    )
    for row in rows:  # cheap to repeat
        row.target = True
    shm = shared_memory.SharedMemory(name=fresh_name("std"), create=True, size=data.nbytes)
    view: np.ndarray[Any, Any] = np.ndarray(data.shape, data.dtype, buffer=shm.buf)
    view[...] = data
    del view

    def close_stdlib() -> None:
        shm.close()
        shm.unlink()

    cleanups.append(close_stdlib)
    rows.append(
        HandoffRow(
            "stdlib: SharedMemory(name) attach per task",
            task_stdlib,
            [(shm.name, data.shape, data.dtype.str, i) for i in range(count)],
            first_column_sum(data, count),
        )
    )
    rows += _peer_rows(config, peers, data, cleanups)
    pickle_count = config.handoff_pickle_tasks
    rows.append(
        HandoffRow(
            f"pickling the array ({pickle_count} tasks)",
            task_pickled,
            [(data, i) for i in range(pickle_count)],
            first_column_sum(data, pickle_count),
        )
    )
    return rows


def _reps(config: Config, row: HandoffRow) -> int:
    return config.handoff_target_reps if row.target else config.handoff_reps


def _time_all(config: Config, peers: Peers, ctx: Any) -> dict[tuple[str, int | None], list[float]]:
    """Run every hand-off row; seconds per task, keyed by (row label, chunksize)."""
    data = make_data(rows_for(config.handoff_mb))
    cleanups: list[Cleanup] = []
    samples: dict[tuple[str, int | None], list[float]] = {}
    # The stdlib row's workers register each attach with a resource tracker: start
    # ours before the pool forks, or each worker starts its own, which unlinks the
    # segment when the worker exits (CPython gh-82300).
    resource_tracker.ensure_running()
    try:
        with ctx.Pool(2) as pool:
            pool.map(task_nothing, range(1000))  # workers started and warm
            rows = _rows(config, peers, data, cleanups)
            for row in rows:  # one untimed round: first attaches, imports, caches
                if row.function is not None:
                    pool.map(row.function, row.tasks[:50], 1)
            reps = max(config.handoff_reps, config.handoff_target_reps)
            for rep in range(reps):
                timed = [row for row in rows if rep < _reps(config, row)]
                for chunksize in CHUNKSIZES:
                    for row in rotated(timed, rep):
                        if row.function is None:
                            continue
                        start = time.perf_counter()
                        results = pool.map(row.function, row.tasks, chunksize)
                        elapsed = time.perf_counter() - start
                        if math.fsum(results) != row.expected:
                            raise AssertionError(f"{row.label}: wrong results")
                        samples.setdefault((row.label, chunksize), []).append(
                            elapsed / len(row.tasks)
                        )
                print(f"[b] repetition {rep + 1}/{reps} done", flush=True)
            del rows
    finally:
        for cleanup in reversed(cleanups):
            cleanup()
        gc.collect()
    return samples


# --------------------------------------------------------------------------- the section


def run(config: Config, peers: Peers, ctx: Any, report: Report) -> None:
    """Section b: per-task cost of handing the array to ``Pool(2).map``."""
    samples = _time_all(config, peers, ctx)
    per_task, ratio_head = f"{MICRO}s/task", f"{TIMES} nothing"
    headers = ["task carries", f"chunksize=1: {per_task}", ratio_head]
    headers += [f"default chunksize: {per_task}", ratio_head]
    table = []
    labels = list(dict.fromkeys(label for label, _ in samples))
    for label in labels:
        cells = [label]
        for chunksize in CHUNKSIZES:
            values = samples[(label, chunksize)]
            ratio = median(values) / median(samples[(NOTHING, chunksize)])
            cells += [fmt_range(values, "", 1e6), fmt_ratio(ratio)]
        table.append(cells)
    for missing in (SHAREDARRAY, JOBLIB):
        if missing not in labels:
            table.append([missing, NOT_INSTALLED, DASH, NOT_INSTALLED, DASH])
    if not any(label.startswith("torch") for label in labels):
        table.append([TORCH, NOT_INSTALLED, DASH, NOT_INSTALLED, DASH])
    report.figures["handoff_1"] = median(samples[(OURS, 1)]) / median(samples[(NOTHING, 1)])
    report.figures["handoff_default"] = median(samples[(OURS, None)]) / median(
        samples[(NOTHING, None)]
    )
    report.figures["handoff_memfd"] = median(samples[(OURS_MEMFD, 1)]) / median(
        samples[(NOTHING, 1)]
    )
    count = config.handoff_tasks
    section = Section(
        "b. Per-task hand-off",
        [
            f"`multiprocessing.Pool(2).map` over {count:,} tasks ({ctx.get_start_method()} "
            f"start method), each reading one element of a {config.handoff_mb} MB float64 "
            f"array ({rows_for(config.handoff_mb)} {TIMES} {COLUMNS}); wall time per task, "
            f"{config.handoff_target_reps} repetitions of the first five rows, "
            f"{config.handoff_reps} of the others; default chunksize {math.ceil(count / 8)}. "
            + method_link("b-per-task-hand-off")
        ],
    )
    section.tables.append(markdown_table(headers, table))
    section.notes.append(
        f"The pickling row ships {config.handoff_mb} MB per task (default chunksize "
        f"{math.ceil(config.handoff_pickle_tasks / 8)}: a chunk's tasks share one pickled "
        "copy)."
    )
    report.add(section)
