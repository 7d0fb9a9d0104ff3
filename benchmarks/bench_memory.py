"""Section d, memory: total PSS while every worker holds and has summed the whole array.

A ``_setup_*`` shares the array one way in the parent and names the ``mem_*`` task
that reads it in each worker; the task keeps what it read in `HELD` until the parent
has measured.  Method: README.md, "d. Memory".
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from multiprocessing import shared_memory
from types import ModuleType
from typing import Any

import numpy as np

from shared_memory_array import SharedMemoryArray

from .config import Config
from .harness import (
    CLOSERS,
    COLUMNS,
    HELD,
    MB,
    MIB,
    SHM_DIR,
    Cleanup,
    Workers,
    fresh_name,
    make_data,
    median,
    pss_bytes,
    rows_for,
    unlink_all,
)
from .peers import NOT_INSTALLED, Peers
from .report import DASH, TIMES, Report, Section, fmt_range, fmt_ratio, markdown_table, method_link

Task = Callable[..., Any]
MemorySetup = Callable[[np.ndarray[Any, Any]], tuple[Task, tuple[Any, ...], Cleanup]]

IDLE = "idle workers, no array (baseline)"
OURS = "**ours**: handle, as_array().sum()"

# --------------------------------------------------------------------------- tasks (in workers)


def mem_idle() -> tuple[float, int]:
    """Memory task reading nothing: the baseline of the processes themselves."""
    return 0.0, os.getpid()


def mem_ours(handle: SharedMemoryArray[Any]) -> tuple[float, int]:
    """Memory task: sum the whole array through our handle and keep the view."""
    array = handle.as_array()
    HELD.append(array)
    return float(array.sum()), os.getpid()


def mem_pickled(array: np.ndarray[Any, Any]) -> tuple[float, int]:
    """Memory task: the array arrived pickled; sum it and keep it."""
    HELD.append(array)
    return float(array.sum()), os.getpid()


def mem_stdlib(name: str, shape: tuple[int, ...], dtype: str) -> tuple[float, int]:
    """Memory task: attach a stdlib SharedMemory by name, sum it, keep it mapped."""
    shm = shared_memory.SharedMemory(name)
    CLOSERS.append(shm.close)
    array: np.ndarray[Any, Any] = np.ndarray(shape, dtype, buffer=shm.buf)
    HELD.append(array)
    return float(array.sum()), os.getpid()


def mem_joblib(path: str) -> tuple[float, int]:
    """Memory task: ``joblib.load(path, mmap_mode='r')``, sum it, keep it mapped."""
    import joblib

    array = joblib.load(path, mmap_mode="r")
    HELD.append(array)
    return float(array.sum()), os.getpid()


def mem_sharedarray(name: str) -> tuple[float, int]:
    """Memory task: ``SharedArray.attach``, sum it, keep it mapped."""
    import SharedArray

    array = SharedArray.attach("shm://" + name)
    HELD.append(array)
    return float(array.sum()), os.getpid()


def mem_torch(tensor: Any) -> tuple[float, int]:
    """Memory task: a shared torch tensor; sum it (through NumPy) and keep it."""
    array = tensor.numpy()
    HELD.append((tensor, array))
    return float(array.sum()), os.getpid()


# --------------------------------------------------------------------------- setups (in the parent)


def _setup_idle(data: np.ndarray[Any, Any]) -> tuple[Task, tuple[Any, ...], Cleanup]:
    return mem_idle, (), lambda: None


def _setup_ours(data: np.ndarray[Any, Any]) -> tuple[Task, tuple[Any, ...], Cleanup]:
    handle = SharedMemoryArray.copy(None, data)
    return mem_ours, (handle,), handle.close


def _setup_pickled(data: np.ndarray[Any, Any]) -> tuple[Task, tuple[Any, ...], Cleanup]:
    return mem_pickled, (data,), lambda: None


def _setup_stdlib(data: np.ndarray[Any, Any]) -> tuple[Task, tuple[Any, ...], Cleanup]:
    shm = shared_memory.SharedMemory(name=fresh_name("std"), create=True, size=data.nbytes)
    view: np.ndarray[Any, Any] = np.ndarray(data.shape, data.dtype, buffer=shm.buf)
    view[...] = data

    def cleanup() -> None:
        nonlocal view
        del view
        shm.close()
        shm.unlink()

    return mem_stdlib, (shm.name, data.shape, data.dtype.str), cleanup


def _setup_joblib(joblib: ModuleType) -> MemorySetup:
    def setup(data: np.ndarray[Any, Any]) -> tuple[Task, tuple[Any, ...], Cleanup]:
        path = os.path.join(SHM_DIR, fresh_name("joblib") + ".joblib")
        written = joblib.dump(data, path)

        return mem_joblib, (path,), lambda: unlink_all(written)

    return setup


def _setup_sharedarray(sharedarray: ModuleType) -> MemorySetup:
    def setup(data: np.ndarray[Any, Any]) -> tuple[Task, tuple[Any, ...], Cleanup]:
        name = fresh_name("sa")
        view = sharedarray.create("shm://" + name, data.shape, data.dtype)
        view[...] = data

        def cleanup() -> None:
            nonlocal view
            del view
            sharedarray.delete("shm://" + name)

        return mem_sharedarray, (name,), cleanup

    return setup


def _setup_torch(torch: ModuleType) -> MemorySetup:
    def setup(data: np.ndarray[Any, Any]) -> tuple[Task, tuple[Any, ...], Cleanup]:
        tensor = torch.from_numpy(data).share_memory_()

        def cleanup() -> None:
            nonlocal tensor
            del tensor

        return mem_torch, (tensor,), cleanup

    return setup


def _measure(
    ctx: Any, workers: int, rows: int, setup: MemorySetup, keep_source: bool
) -> tuple[int, int]:
    """One measurement: start workers, share the array, let each sum it; total PSS.

    The workers start before the array exists, so none inherits it through fork.
    The parent drops its private source array after sharing it, except when the
    array itself is what it sends (pickling).  Returns (total PSS, parent's PSS).
    """
    with Workers(ctx, workers) as pool:
        data = make_data(rows)
        expected = float(data.sum())
        function, args, cleanup = setup(data)
        try:
            if not keep_source:
                del data
                gc.collect()
            answers = pool.call_each([(function, args)] * workers)
            del args
            for value, _pid in answers:
                if function is not mem_idle and value != expected:
                    raise AssertionError(f"{function.__name__}: sum {value} != {expected}")
            parent = pss_bytes(os.getpid())
            total = parent + sum(pss_bytes(pid) for pid in pool.pids)
        finally:
            pool.close()
            cleanup()
            gc.collect()
    return total, parent


# --------------------------------------------------------------------------- the section


def run(config: Config, peers: Peers, ctx: Any, report: Report) -> None:
    """Section d: total PSS of the parent and its workers, each reading the whole array."""
    rows = rows_for(config.memory_mb)
    nbytes = rows * COLUMNS * 8
    joblib, sharedarray, torch = peers.get("joblib"), peers.get("SharedArray"), peers.get("torch")
    methods: list[tuple[str, MemorySetup | None, bool]] = [
        (IDLE, _setup_idle, False),
        (OURS, _setup_ours, False),
        ("stdlib: SharedMemory(name)", _setup_stdlib, False),
        ("joblib: load(mmap_mode='r')", None if joblib is None else _setup_joblib(joblib), False),
        (
            "SharedArray: attach",
            None if sharedarray is None else _setup_sharedarray(sharedarray),
            False,
        ),
        ("torch: shared tensor", None if torch is None else _setup_torch(torch), False),
        ("pickling the array", _setup_pickled, True),
    ]
    totals: dict[str, list[float]] = {}
    excess: dict[str, list[float]] = {}
    for rep in range(config.memory_reps):
        baseline = 0.0
        for label, setup, keep_source in methods:
            if setup is None:
                continue
            total, _parent = _measure(ctx, config.memory_workers, rows, setup, keep_source)
            if setup is _setup_idle:
                baseline = total
            totals.setdefault(label, []).append(total)
            excess.setdefault(label, []).append(total - baseline)
        print(f"[d] repetition {rep + 1}/{config.memory_reps} done", flush=True)
    table = []
    for label, setup, _keep in methods:
        if setup is None:
            table.append([label, NOT_INSTALLED, DASH, DASH, DASH])
            continue
        total_ratio = median(totals[label]) / nbytes
        cells = [label, fmt_range(totals[label], "", 1 / MIB), fmt_ratio(total_ratio)]
        if setup is _setup_idle:
            cells += ["0", DASH]
        else:
            cells += [
                fmt_range(excess[label], "", 1 / MIB),
                fmt_ratio(median(excess[label]) / nbytes),
            ]
        table.append(cells)
    report.figures["pss"] = median(excess[OURS]) / nbytes
    report.figures["pss_total"] = median(totals[OURS]) / nbytes
    section = Section(
        "d. Memory",
        [
            f"Total PSS of the parent and {config.memory_workers} worker processes "
            f"({ctx.get_start_method()} start method), each holding and having summed the "
            f"whole {nbytes / MB:.0f} MB ({nbytes / MIB:.0f} MiB) float64 array; "
            f"{config.memory_reps} repetition(s). " + method_link("d-memory")
        ],
    )
    section.tables.append(
        markdown_table(
            [
                "way",
                "total PSS, MiB",
                f"{TIMES} array",
                "array-attributable PSS, MiB",
                f"{TIMES} array",
            ],
            table,
        )
    )
    report.add(section)
