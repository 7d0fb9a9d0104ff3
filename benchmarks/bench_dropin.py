"""Section g, drop-in executors: `ProcessPoolExecutor` and `Pool` given plain arrays.

Three tables.  *Map*: what a task costs when every task is given the same large
array, against the same pool given nothing, beside the standard executor (which
pickles it) and joblib (which memory-maps it).  *Results*: large arrays returned,
against the standard executor: wall time, and how far the parent's peak RSS rises
(measured in a fresh process).  *Memory*: the PSS that workers reading the same
array add.  The functions under "tasks" run in the pools' workers.  Method:
README.md, "g. Drop-in executors".
"""

from __future__ import annotations

import concurrent.futures
import gc
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

import shared_memory_array
from shared_memory_array import SharedMemoryArray

from .bench_handoff import task_nothing
from .config import Config
from .harness import (
    COLUMNS,
    HELD,
    MB,
    MIB,
    first_column_sum,
    make_data,
    median,
    pss_bytes,
    rotated,
    rows_for,
    timed,
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
    fmt_time,
    markdown_table,
    method_link,
)

Executor = concurrent.futures.ProcessPoolExecutor
MapRun = Callable[[int], list[float]]  # maps a row's task function over its first n tasks
OURS, STDLIB = "ours", "stdlib"
EXECUTORS: dict[str, Callable[..., Executor]] = {
    OURS: shared_memory_array.ProcessPoolExecutor,
    STDLIB: concurrent.futures.ProcessPoolExecutor,
}
OURS_EXECUTOR = "**ours**: `ProcessPoolExecutor(2)`"
STDLIB_EXECUTOR = "stdlib `concurrent.futures.ProcessPoolExecutor(2)`"
JOBLIB = "joblib `Parallel(n_jobs=2)`"
OURS_POOL = "**ours**: `Pool(2)`"
STDLIB_POOL = "stdlib `multiprocessing.Pool(2)`"
NOTHING = "nothing (an int)"
ARRAY = "the array"
MEET_TIMEOUT = 120.0  # seconds a memory task waits for the others before failing

# --------------------------------------------------------------------------- tasks (in workers)

_meeting: list[Any] = []  # in a memory worker: the barrier its pool's tasks meet at


def read_one(array: np.ndarray[Any, Any], i: int) -> float:
    """Map task: read one element of the array it was given."""
    return float(array[i % array.shape[0], 0])


def read_one_item(item: tuple[np.ndarray[Any, Any], int]) -> float:
    """`read_one` for ``Pool.map``, whose tasks take one argument: ``(array, i)``."""
    array, i = item
    return read_one(array, i)


def make_result(i: int, elements: int) -> np.ndarray[Any, Any]:
    """Results task: a new float64 array of ``elements`` values, all ``i``."""
    return np.full(elements, float(i))


def join_meeting(barrier: Any) -> None:
    """Memory workers' initializer: keep the barrier their tasks meet at."""
    _meeting.append(barrier)


def meet(_given: object) -> int:
    """Memory task: wait until every worker of the pool runs one; this process's id.

    No worker can take two of them, so each of the pool's workers runs exactly one.
    """
    _meeting[0].wait(MEET_TIMEOUT)
    return os.getpid()


def sum_and_hold(array: np.ndarray[Any, Any]) -> tuple[float, int]:
    """Memory task: sum the whole array, keep it in `HELD`, then `meet` the others."""
    HELD.append(array)
    return float(array.sum()), meet(None)


# ---------------------------------------------------------------------------- map (in the parent)


@dataclass
class MapRow:
    """One pool mapping one task function; its nothing row is the same pool given ints."""

    pool: str
    chunksize: str
    gets: str
    tasks: int
    run: MapRun | None  # None: the peer is not installed
    expected: float = 0.0
    samples: list[float] = field(default_factory=list)  # seconds per task

    @property
    def floor_key(self) -> tuple[str, str]:
        """The pool and chunksize: a row's ratio is to the nothing row with the same."""
        return self.pool, self.chunksize


def _executor_map(
    executor: Executor, function: Callable[..., float], *columns: list[Any]
) -> MapRun:
    def run(count: int) -> list[float]:
        return list(executor.map(function, *(column[:count] for column in columns), chunksize=1))

    return run


def _pool_map(
    pool: Any, function: Callable[[Any], float], items: list[Any], chunk: int | None
) -> MapRun:
    def run(count: int) -> list[float]:
        results: list[float] = pool.map(function, items[:count], chunk)
        return results

    return run


def _joblib_map(joblib: Any, batch_size: int | str, data: np.ndarray[Any, Any] | None) -> MapRun:
    # A new Parallel for every call: calling one Parallel again with the same array
    # fails in its workers (the file it memory-mapped the first time is gone; joblib 1.6).
    def run(count: int) -> list[float]:
        parallel = joblib.Parallel(n_jobs=2, batch_size=batch_size)
        if data is None:
            results: list[float] = parallel(joblib.delayed(task_nothing)(i) for i in range(count))
        else:
            results = parallel(joblib.delayed(read_one)(data, i) for i in range(count))
        return results

    return run


def _map_rows(
    config: Config, peers: Peers, ctx: Any, stack: ExitStack, data: np.ndarray[Any, Any]
) -> list[MapRow]:
    """Start the pools (closed by ``stack``) and build every row's tasks (not timed)."""
    count = config.dropin_tasks
    arrays, indices = [data] * count, list(range(count))
    items = [(data, i) for i in indices]
    ours = stack.enter_context(shared_memory_array.ProcessPoolExecutor(2, mp_context=ctx))
    stdlib = stack.enter_context(concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx))
    pool = stack.enter_context(shared_memory_array.Pool(2, context=ctx))
    stdlib_pool = stack.enter_context(ctx.Pool(2))
    default = f"default ({math.ceil(count / 8)})"
    pickled = config.dropin_pickle_tasks
    rows = [
        MapRow(OURS_EXECUTOR, "1", NOTHING, count, _executor_map(ours, task_nothing, indices)),
        MapRow(
            OURS_EXECUTOR,
            "1",
            f"**{ARRAY}**",
            count,
            _executor_map(ours, read_one, arrays, indices),
        ),
        MapRow(STDLIB_EXECUTOR, "1", NOTHING, count, _executor_map(stdlib, task_nothing, indices)),
        MapRow(
            STDLIB_EXECUTOR,
            "1",
            f"{ARRAY}, pickled",
            pickled,
            _executor_map(stdlib, read_one, arrays, indices),
        ),
    ]
    joblib = peers.get("joblib")
    batch_sizes: tuple[int | str, ...] = (1, "auto")
    for batch_size in () if joblib is None else batch_sizes:
        chunk, tasks = f"batch_size={batch_size!r}", config.dropin_joblib_tasks
        rows += [
            MapRow(JOBLIB, chunk, NOTHING, tasks, _joblib_map(joblib, batch_size, None)),
            MapRow(
                JOBLIB,
                chunk,
                f"{ARRAY}, memory-mapped",
                tasks,
                _joblib_map(joblib, batch_size, data),
            ),
        ]
    if joblib is None:
        rows.append(MapRow(JOBLIB, DASH, DASH, 0, None))
    for chunksize, label in ((1, "1"), (None, default)):
        rows += [
            MapRow(
                OURS_POOL, label, NOTHING, count, _pool_map(pool, task_nothing, indices, chunksize)
            ),
            MapRow(
                OURS_POOL,
                label,
                f"**{ARRAY}**",
                count,
                _pool_map(pool, read_one_item, items, chunksize),
            ),
            MapRow(
                STDLIB_POOL,
                label,
                NOTHING,
                count,
                _pool_map(stdlib_pool, task_nothing, indices, chunksize),
            ),
        ]
    for row in rows:
        is_nothing = row.gets == NOTHING
        row.expected = (
            math.fsum(map(float, range(row.tasks)))
            if is_nothing
            else first_column_sum(data, row.tasks)
        )
    return rows


def _time_maps(config: Config, peers: Peers, ctx: Any) -> tuple[list[MapRow], list[float]]:
    """Every map row's seconds per task, and the seconds of one copy of the array."""
    data = make_data(rows_for(config.dropin_mb))
    copies: list[float] = []
    with ExitStack() as stack:
        rows = _map_rows(config, peers, ctx, stack, data)
        runnable = [(row, row.run) for row in rows if row.run is not None]
        for row, run in runnable:  # one untimed round: workers started, imports, first maps
            run(max(1, min(50, row.tasks // 10)))
        for rep in range(config.dropin_reps):
            for row, run in rotated(runnable, rep):
                start = time.perf_counter()
                results = run(row.tasks)
                elapsed = time.perf_counter() - start
                if math.fsum(results) != row.expected:
                    raise AssertionError(f"{row.pool}, {row.gets}: wrong results")
                row.samples.append(elapsed / row.tasks)
            elapsed, handle = timed(lambda: SharedMemoryArray.copy(None, data))
            handle.close()
            copies.append(elapsed)
            print(f"[g] map repetition {rep + 1}/{config.dropin_reps} done", flush=True)
    joblib = peers.get("joblib")
    if joblib is not None:  # joblib keeps its workers for the next Parallel: stop them
        joblib.externals.loky.get_reusable_executor().shutdown(wait=True)
    return rows, copies


# ------------------------------------------------------------------------ results (in the parent)


def _results(executor: Executor, count: int, elements: int) -> list[np.ndarray[Any, Any]]:
    return list(executor.map(make_result, range(count), [elements] * count))


def _read_all(results: list[np.ndarray[Any, Any]], elements: int) -> None:
    """Sum every result (which reads all of it) and check it."""
    for i, result in enumerate(results):
        if result.shape != (elements,) or float(result.sum()) != i * elements:
            raise AssertionError(f"result {i} is wrong")


def _time_results(config: Config, ctx: Any) -> dict[str, tuple[list[float], list[float]]]:
    """Seconds until every result is in, then seconds to read them all, per executor."""
    count, elements = config.dropin_results, config.dropin_result_mb * MB // 8
    samples: dict[str, tuple[list[float], list[float]]] = {OURS: ([], []), STDLIB: ([], [])}
    with EXECUTORS[OURS](2, mp_context=ctx) as ours, EXECUTORS[STDLIB](2, mp_context=ctx) as std:
        executors = {OURS: ours, STDLIB: std}
        for executor in executors.values():  # warm-up: workers started, first segments
            _read_all(_results(executor, count, 1 << 18), 1 << 18)
        for rep in range(config.dropin_result_reps):
            for kind in rotated(list(executors), rep):
                start = time.perf_counter()
                results = _results(executors[kind], count, elements)
                delivered = time.perf_counter()
                _read_all(results, elements)
                samples[kind][0].append(delivered - start)
                samples[kind][1].append(time.perf_counter() - delivered)
                del results
                gc.collect()
            print(f"[g] results repetition {rep + 1}/{config.dropin_result_reps} done", flush=True)
    return samples


def _status_bytes(key: str) -> int:
    """A ``kB`` line of /proc/self/status, such as ``VmRSS`` or ``VmHWM``, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} line in /proc/self/status")


def _peak_child(conn: Connection, kind: str, count: int, elements: int, method: str) -> None:
    """In a fresh process: how far the peak RSS rises while ``count`` results arrive."""
    try:
        ctx = multiprocessing.get_context(method)
        with EXECUTORS[kind](2, mp_context=ctx) as executor:
            _read_all(_results(executor, count, 1 << 18), 1 << 18)  # workers started
            gc.collect()
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # the peak (VmHWM) starts again from the RSS now
            before = _status_bytes("VmRSS")
            results = _results(executor, count, elements)
            _read_all(results, elements)  # every page read, every result still held
            growth = _status_bytes("VmHWM") - before
            del results
        conn.send(("ok", growth))
    except Exception as exc:  # sent back and raised in the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _peak_growth(config: Config, ctx: Any, kind: str) -> int:
    """Bytes the parent's peak RSS rises by while an executor returns the results."""
    ours, theirs = ctx.Pipe()
    count, elements = config.dropin_results, config.dropin_result_mb * MB // 8
    child = ctx.Process(
        target=_peak_child, args=(theirs, kind, count, elements, ctx.get_start_method())
    )
    child.start()
    theirs.close()
    try:
        status, value = ours.recv()
    finally:
        child.join()
        ours.close()
    if status != "ok":
        raise RuntimeError(f"peak RSS of {kind}: {value}")
    growth: int = value
    return growth


# ------------------------------------------------------------------------- memory (in the parent)


def _workers_pss(config: Config, ctx: Any, kind: str) -> tuple[int, int]:
    """PSS that fresh workers add by each summing and holding the array, and their idle PSS.

    The workers start, and their idle PSS is measured, before the array exists, so
    none inherits it through fork; each has first been given a 1 MiB array, so the
    way arrays arrive has been used once (its first use allocates a little).
    """
    workers = config.dropin_memory_workers
    barrier = ctx.Barrier(workers)
    with EXECUTORS[kind](
        workers, mp_context=ctx, initializer=join_meeting, initargs=(barrier,)
    ) as executor:
        pids = set(executor.map(meet, [np.ones(1 << 17)] * workers))
        idle = sum(pss_bytes(pid) for pid in pids)
        data = make_data(rows_for(config.dropin_memory_mb))
        expected = float(data.sum())
        answers = list(executor.map(sum_and_hold, [data] * workers))
        del data
        if {pid for _, pid in answers} != pids or any(value != expected for value, _ in answers):
            raise AssertionError(f"{kind}: wrong sums, or not one task per worker")
        held = sum(pss_bytes(pid) for pid in pids)
    return held - idle, idle


# --------------------------------------------------------------------------- the section


def _map_table(rows: list[MapRow]) -> list[list[str]]:
    floors = {row.floor_key: median(row.samples) for row in rows if row.gets == NOTHING}
    table = []
    for row in rows:
        cells = [row.pool, row.chunksize, row.gets, f"{row.tasks:,}" if row.tasks else DASH]
        if row.run is None:
            cells += [NOT_INSTALLED, DASH]
        else:
            ratio = median(row.samples) / floors[row.floor_key]
            cells += [fmt_range(row.samples, "", 1e6), fmt_ratio(ratio)]
        table.append(cells)
    return table


def _ratio_to_nothing(rows: list[MapRow], pool: str, chunksize: str) -> float:
    [nothing] = [row for row in rows if row.floor_key == (pool, chunksize) and row.gets == NOTHING]
    [given] = [row for row in rows if row.floor_key == (pool, chunksize) and row.gets != NOTHING]
    return median(given.samples) / median(nothing.samples)


def run(config: Config, peers: Peers, ctx: Any, report: Report) -> None:
    """Section g: the drop-in executors given, and returning, large arrays."""
    rows, copies = _time_maps(config, peers, ctx)
    times = _time_results(config, ctx)
    growth: dict[str, list[float]] = {OURS: [], STDLIB: []}
    added: dict[str, list[float]] = {OURS: [], STDLIB: []}
    idle: list[float] = []
    for rep in range(config.dropin_memory_reps):
        for kind in rotated([OURS, STDLIB], rep):
            growth[kind].append(_peak_growth(config, ctx, kind))
            pss, baseline = _workers_pss(config, ctx, kind)
            added[kind].append(pss)
            idle.append(baseline)
        print(f"[g] memory repetition {rep + 1}/{config.dropin_memory_reps} done", flush=True)

    count, default = config.dropin_tasks, f"default ({math.ceil(config.dropin_tasks / 8)})"
    results_size = config.dropin_results * (config.dropin_result_mb * MB // 8) * 8
    memory_size = rows_for(config.dropin_memory_mb) * COLUMNS * 8
    report.figures["dropin_map"] = _ratio_to_nothing(rows, OURS_EXECUTOR, "1")
    report.figures["dropin_pool_default"] = _ratio_to_nothing(rows, OURS_POOL, default)
    report.figures["dropin_results"] = median(times[OURS][0]) / median(times[STDLIB][0])
    report.figures["dropin_results_rss"] = median(growth[OURS]) / results_size
    report.figures["dropin_results_rss_stdlib"] = median(growth[STDLIB]) / results_size
    report.figures["dropin_pss"] = median(added[OURS]) / memory_size
    report.figures["dropin_pss_stdlib"] = median(added[STDLIB]) / memory_size

    workers = config.dropin_memory_workers
    section = Section(
        "g. Drop-in executors",
        [
            f"`shared_memory_array.ProcessPoolExecutor` and `shared_memory_array.Pool` "
            f"({ctx.get_start_method()} start method) given plain arrays. *Map*: "
            f"{count:,} tasks each given the same {config.dropin_mb} MB float64 array "
            f"({rows_for(config.dropin_mb)} {TIMES} {COLUMNS}) in one `map` call, reading one "
            f"element; wall time per task, {config.dropin_reps} repetitions. *Results*: "
            f"{config.dropin_results} tasks each returning a new {config.dropin_result_mb} MB "
            f"array, 2 workers; {config.dropin_result_reps} repetitions (time), "
            f"{config.dropin_memory_reps} (peak RSS). *Memory*: {workers} workers each summing "
            f"the same {config.dropin_memory_mb} MB array; {config.dropin_memory_reps} "
            "repetition(s). " + method_link("g-drop-in-executors")
        ],
    )
    section.tables.append(
        markdown_table(
            ["pool", "chunksize", "each task gets", "tasks", f"{MICRO}s/task", f"{TIMES} nothing"],
            _map_table(rows),
        )
    )
    section.tables.append(
        markdown_table(
            [
                f"`map`, {config.dropin_results} tasks returning {config.dropin_result_mb} MB each",
                "until all results are in",
                f"{TIMES} stdlib",
                "then summing every result",
                "parent's peak RSS rise, MiB",
                f"{TIMES} results' size",
            ],
            [
                [
                    label,
                    fmt_time(times[kind][0]),
                    fmt_ratio(median(times[kind][0]) / median(times[STDLIB][0])),
                    fmt_time(times[kind][1]),
                    fmt_range(growth[kind], "", 1 / MIB),
                    fmt_ratio(median(growth[kind]) / results_size),
                ]
                for kind, label in ((OURS, OURS_EXECUTOR), (STDLIB, STDLIB_EXECUTOR))
            ],
        )
    )
    section.tables.append(
        markdown_table(
            [
                f"`ProcessPoolExecutor({workers})`, one `map` call, each task summing the array",
                "workers' PSS added, MiB",
                f"{TIMES} array",
            ],
            [
                [
                    label,
                    fmt_range(added[kind], "", 1 / MIB),
                    fmt_ratio(median(added[kind]) / memory_size),
                ]
                for kind, label in (
                    (OURS, "**ours**: the array through shared memory"),
                    (STDLIB, "stdlib: the array pickled"),
                )
            ],
        )
    )
    per_task = median(copies) / count
    section.notes += [
        "Every row given the array includes that call's one copy of it (ours into shared "
        "memory, joblib's dump to a file): `SharedMemoryArray.copy` of the "
        f"{config.dropin_mb} MB array alone takes {fmt_time(copies)}, "
        f"{per_task * 1e6:.1f} {MICRO}s per task over {count:,} tasks.",
        f"The pickling row ships {config.dropin_mb} MB with every task.",
        f"The idle workers' PSS subtracted in the memory table: {fmt_range(idle, '', 1 / MIB)} "
        "MiB in all.",
    ]
    report.add(section)
