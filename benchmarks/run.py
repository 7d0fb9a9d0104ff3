"""Benchmarks of shared_memory_array against its peers, measured side by side in one run.

Usage::

    python benchmarks/run.py           # the full run, about 5 to 10 minutes
    python benchmarks/run.py --quick   # a smoke run with small sizes, under a minute
    python benchmarks/run.py --sections dask --merge   # redo one section in RESULTS.md

Every section times this library and each peer in the same process and the same
run, interleaving the methods repetition by repetition, and reports the median with
the min-max range.  The full run writes ``benchmarks/RESULTS.md``; see
``benchmarks/README.md`` for what each table measures and how to read it.
"""

from __future__ import annotations

import _posixshmem
import argparse
import contextlib
import datetime
import gc
import importlib
import importlib.metadata
import itertools
import math
import mmap
import multiprocessing
import os
import pickle
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import resource_tracker, shared_memory
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import shared_memory_array
from shared_memory_array import SharedMemoryArray, release_cached_mappings

MB = 1_000_000
MIB = 1 << 20
HERE = Path(__file__).resolve().parent
SHM_DIR = "/dev/shm"
COLUMNS = 1000  # arrays are (rows, 1000) float64: 8 MB is 1000 rows
NOT_INSTALLED = "not installed"
# Non-ASCII characters of the tables, spelled as escapes (ruff's RUF001 flags them)
TIMES = "\u00d7"  # multiplication sign, for ratios
DASH = "\u2013"  # en dash: ranges, and alone a figure that was not measured
MICRO = "\u00b5"  # micro sign

Cleanup = Callable[[], None]

# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Config:
    """Sizes and repetition counts of one run."""

    quick: bool
    share_sizes_mb: tuple[int, ...]
    share_reps: tuple[int, ...]  # one count per size
    handoff_mb: int
    handoff_tasks: int
    handoff_pickle_tasks: int
    handoff_torch_tasks: int
    handoff_reps: int
    attach_mb: int
    attach_iters: int
    attach_warm_iters: int
    attach_reps: int
    memory_mb: int
    memory_workers: int
    memory_reps: int
    rowsum_shape: tuple[int, int]
    rowsum_reps: int
    bandwidth_mb: int
    dask_mb: int
    dask_workers: int
    dask_pss_reps: int
    dask_time_reps: int


FULL = Config(
    quick=False,
    share_sizes_mb=(8, 80, 800),
    share_reps=(21, 11, 7),
    handoff_mb=80,
    handoff_tasks=10_000,
    handoff_pickle_tasks=24,
    handoff_torch_tasks=1000,
    handoff_reps=7,
    attach_mb=80,
    attach_iters=3000,
    attach_warm_iters=30_000,
    attach_reps=9,
    memory_mb=800,
    memory_workers=4,
    memory_reps=3,
    rowsum_shape=(10_000, 10_000),
    rowsum_reps=9,
    bandwidth_mb=400,
    dask_mb=400,
    dask_workers=4,
    dask_pss_reps=3,
    dask_time_reps=7,
)

QUICK = Config(
    quick=True,
    share_sizes_mb=(8,),
    share_reps=(3,),
    handoff_mb=8,
    handoff_tasks=1000,
    handoff_pickle_tasks=6,
    handoff_torch_tasks=100,
    handoff_reps=2,
    attach_mb=8,
    attach_iters=300,
    attach_warm_iters=3000,
    attach_reps=3,
    memory_mb=16,
    memory_workers=4,
    memory_reps=1,
    rowsum_shape=(2000, 4000),
    rowsum_reps=3,
    bandwidth_mb=32,
    dask_mb=16,
    dask_workers=4,
    dask_pss_reps=1,
    dask_time_reps=2,
)

# --------------------------------------------------------------------------- helpers

_counter = itertools.count()


def fresh_name(kind: str) -> str:
    """Return a new segment or file name; every name this script makes starts ``smabench_``."""
    return f"smabench_{kind}_{os.getpid()}_{next(_counter)}"


def make_data(rows: int, columns: int = COLUMNS) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Return a touched ``(rows, columns)`` float64 array with distinct values (cheap to make)."""
    return np.arange(rows * columns, dtype=np.float64).reshape(rows, columns)


def rows_for(megabytes: int) -> int:
    """Rows of a ``(rows, 1000)`` float64 array of ``megabytes`` MB (10**6 bytes)."""
    return max(1, megabytes * MB // (8 * COLUMNS))


def pss_bytes(pid: int) -> int:
    """Proportional set size of process ``pid``: a page shared by N processes counts 1/N."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss line for pid {pid}")


def unit_for(seconds: float) -> tuple[str, float]:
    """Pick a display unit for a duration: (name, scale)."""
    if seconds < 1e-3:
        return f"{MICRO}s", 1e6
    if seconds < 1.0:
        return "ms", 1e3
    return "s", 1.0


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_range(values: Sequence[float], unit: str = "", scale: float = 1.0) -> str:
    """Format samples as ``median (min-max)`` in a fixed unit."""
    median = statistics.median(values) * scale
    low, high = min(values) * scale, max(values) * scale
    suffix = f" {unit}" if unit else ""
    if len(values) == 1:
        return f"{_number(median)}{suffix}"
    return f"{_number(median)}{suffix} ({_number(low)}{DASH}{_number(high)})"


def fmt_time(values: Sequence[float]) -> str:
    """Format durations as ``median (min-max)`` in a unit chosen from the median."""
    unit, scale = unit_for(statistics.median(values))
    return fmt_range(values, unit, scale)


def fmt_ratio(value: float | None) -> str:
    """Format a ratio such as ``1.07x`` (with a multiplication sign); a dash if not measured."""
    return DASH if value is None or math.isnan(value) else f"{value:.2f}{TIMES}"


def median(values: Sequence[float]) -> float:
    """Median of samples (NaN for none)."""
    return statistics.median(values) if values else math.nan


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: bool = True
) -> list[str]:
    """Lines of a markdown table; with ``numeric``, columns after the first align right."""
    rule = "---:" if numeric else "---"
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join(["---"] + [rule] * (len(headers) - 1)) + "|")
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


# --------------------------------------------------------------------------- peers


@dataclass
class Peers:
    """The optional peer libraries found in this environment."""

    modules: dict[str, ModuleType | None]
    problems: dict[str, str]

    def get(self, name: str) -> ModuleType | None:
        """The module, or ``None`` when it is not installed (or left out on request)."""
        return self.modules.get(name)

    def version(self, name: str) -> str:
        """Installed version of a peer, or why it is missing."""
        module = self.modules.get(name)
        if module is None:
            return f"{NOT_INSTALLED} ({self.problems.get(name, 'unknown')})"
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return str(getattr(module, "__version__", "unknown"))


def load_peers(without: set[str]) -> Peers:
    """Import joblib, SharedArray and torch where installed; never fail."""
    modules: dict[str, ModuleType | None] = {}
    problems: dict[str, str] = {}
    for name in ("joblib", "SharedArray", "torch"):
        if name.lower() in without:
            modules[name] = None
            problems[name] = "left out with --without"
            continue
        try:
            modules[name] = importlib.import_module(name)
            if name == "torch":
                # registers torch's reducers with multiprocessing's pickler
                importlib.import_module("torch.multiprocessing")
        except Exception as exc:  # any import failure means "not installed" here
            modules[name] = None
            problems[name] = f"{type(exc).__name__}: {exc}"[:120]
    return Peers(modules, problems)


# --------------------------------------------------------------------------- report


@dataclass
class Section:
    """One section of the report: a title, an explanation, tables and notes."""

    title: str
    intro: list[str]
    tables: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Target:
    """One of the library's targets and the ratio measured for it in this run."""

    label: str
    measured: float | None
    limit: float
    at_most: bool  # True: measured must be <= limit; False: >= limit
    how: str
    section: str  # the letter of the section that measures it

    def verdict(self) -> str:
        """``met`` with the margin, or ``missed by`` how much."""
        if self.measured is None or math.isnan(self.measured):
            return "not measured"
        if self.at_most:
            excess = self.measured / self.limit - 1
            met = self.measured <= self.limit
        else:
            excess = 1 - self.measured / self.limit
            met = self.measured >= self.limit
        if met:
            return f"met ({-excess * 100:.0f}% margin)"
        return f"**missed** by {excess * 100:.0f}%"


@dataclass
class Report:
    """Everything measured in this run, printed as it comes and written as markdown."""

    sections: list[Section] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    def add(self, section: Section) -> None:
        """Record a finished section and print it."""
        self.sections.append(section)
        print(f"\n## {section.title}\n", flush=True)
        for table in section.tables:
            print("\n".join(table) + "\n")
        for note in section.notes:
            print(f"- {note}")
        sys.stdout.flush()


# --------------------------------------------------------------------------- persistent workers

_HELD: list[Any] = []  # objects a worker keeps alive until the parent has measured it
_CLOSERS: list[Cleanup] = []  # run after _HELD is emptied


def release_held() -> None:
    """In a worker: drop what `_HELD` keeps, then close what needs closing."""
    _HELD.clear()
    while _CLOSERS:
        _CLOSERS.pop()()
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
    what a request left in `_HELD` until the parent has measured its memory.
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


# --------------------------------------------------------------------------- a. share cost


def put_memcpy_floor(src: np.ndarray[Any, Any], touched: np.ndarray[Any, Any]) -> float:
    """Floor: copy into memory that is already mapped and touched (no page faults)."""
    start = time.perf_counter()
    np.copyto(touched, src)
    return time.perf_counter() - start


def put_fresh_anonymous(src: np.ndarray[Any, Any]) -> tuple[float, Cleanup]:
    """Floor: copy into a fresh private anonymous mapping (page faults, THP as configured)."""
    start = time.perf_counter()
    region = mmap.mmap(-1, src.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = np.frombuffer(region, dtype=src.dtype).reshape(src.shape)
    np.copyto(view, src)
    elapsed = time.perf_counter() - start
    del view
    return elapsed, region.close


def put_fresh_shm_mmap(src: np.ndarray[Any, Any]) -> tuple[float, Cleanup]:
    """Floor: create a /dev/shm file, ftruncate, mmap it and copy in (page faults)."""
    path = os.path.join(SHM_DIR, fresh_name("floor"))
    start = time.perf_counter()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, src.nbytes)
        region = mmap.mmap(fd, src.nbytes)
    finally:
        os.close(fd)
    view = np.frombuffer(region, dtype=src.dtype).reshape(src.shape)
    np.copyto(view, src)
    elapsed = time.perf_counter() - start
    del view

    def cleanup() -> None:
        region.close()
        os.unlink(path)

    return elapsed, cleanup


def put_fresh_shm_pwrite(src: np.ndarray[Any, Any]) -> tuple[float, Cleanup]:
    """Floor: create a /dev/shm file, ftruncate and pwrite() the bytes (no mapping)."""
    path = os.path.join(SHM_DIR, fresh_name("floor"))
    data = memoryview(src.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    start = time.perf_counter()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, src.nbytes)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, data[offset:], offset)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    return elapsed, lambda: os.unlink(path)


def put_ours(src: np.ndarray[Any, Any]) -> tuple[float, Cleanup]:
    """This library: ``SharedMemoryArray.copy(None, src)``."""
    start = time.perf_counter()
    handle = SharedMemoryArray.copy(None, src)
    elapsed = time.perf_counter() - start
    return elapsed, handle.close


def put_stdlib(src: np.ndarray[Any, Any]) -> tuple[float, Cleanup]:
    """Stdlib: ``SharedMemory(create=True)``, an ndarray over its buffer, then a copy."""
    start = time.perf_counter()
    shm = shared_memory.SharedMemory(name=fresh_name("std"), create=True, size=src.nbytes)
    view: np.ndarray[Any, Any] = np.ndarray(src.shape, src.dtype, buffer=shm.buf)
    np.copyto(view, src)
    elapsed = time.perf_counter() - start
    del view

    def cleanup() -> None:
        shm.close()
        shm.unlink()

    return elapsed, cleanup


def _unlink_all(paths: Sequence[str]) -> None:
    """Remove the files ``joblib.dump`` wrote."""
    for path in paths:
        os.unlink(path)


def put_joblib(src: np.ndarray[Any, Any], joblib: ModuleType) -> tuple[float, Cleanup]:
    """joblib: ``joblib.dump`` into a file in /dev/shm (what its memmapping backend does)."""
    path = os.path.join(SHM_DIR, fresh_name("joblib") + ".joblib")
    start = time.perf_counter()
    written = joblib.dump(src, path)
    elapsed = time.perf_counter() - start

    return elapsed, lambda: _unlink_all(written)


def put_sharedarray(src: np.ndarray[Any, Any], sharedarray: ModuleType) -> tuple[float, Cleanup]:
    """SharedArray: ``SharedArray.create('shm://name', ...)`` and a copy."""
    name = fresh_name("sa")
    start = time.perf_counter()
    view = sharedarray.create("shm://" + name, src.shape, src.dtype)
    np.copyto(view, src)
    elapsed = time.perf_counter() - start
    del view
    return elapsed, lambda: sharedarray.delete("shm://" + name)


def put_torch(src: np.ndarray[Any, Any], torch: ModuleType) -> tuple[float, Cleanup]:
    """torch: ``torch.from_numpy(src).share_memory_()`` (a copy into shared memory)."""
    start = time.perf_counter()
    tensor = torch.from_numpy(src).share_memory_()
    elapsed = time.perf_counter() - start
    del tensor  # torch unlinks its segment at once and keeps a descriptor
    return elapsed, lambda: None


def bench_share(config: Config, peers: Peers, report: Report) -> None:
    """Section a: time to put an array into shared memory, per method and size."""
    joblib, sharedarray, torch = peers.get("joblib"), peers.get("SharedArray"), peers.get("torch")
    methods: list[tuple[str, Callable[[np.ndarray[Any, Any]], tuple[float, Cleanup]] | None]] = [
        ("floor: fresh private anonymous mmap + copy", put_fresh_anonymous),
        ("floor: fresh /dev/shm file, mmap + copy", put_fresh_shm_mmap),
        ("floor: fresh /dev/shm file, pwrite()", put_fresh_shm_pwrite),
        ("**ours**: SharedMemoryArray.copy", put_ours),
        ("stdlib: SharedMemory(create=True) + copy", put_stdlib),
        (
            "joblib: dump to /dev/shm",
            None if joblib is None else (lambda s: put_joblib(s, joblib)),
        ),
        (
            "SharedArray: create + copy",
            None if sharedarray is None else (lambda s: put_sharedarray(s, sharedarray)),
        ),
        (
            "torch: from_numpy(a).share_memory_()",
            None if torch is None else (lambda s: put_torch(s, torch)),
        ),
    ]
    memcpy_label = "floor: memcpy into touched memory (np.copyto)"
    samples: dict[tuple[str, int], list[float]] = {}
    for size_mb, reps in zip(config.share_sizes_mb, config.share_reps):
        src = make_data(rows_for(size_mb))
        touched = np.empty_like(src)
        touched[...] = 0
        for rep in range(reps + 1):  # repetition 0 warms up and is not recorded
            runs: list[tuple[str, float]] = [(memcpy_label, put_memcpy_floor(src, touched))]
            shift = rep % len(methods)  # rotate the order, so no method always follows another
            for label, method in methods[shift:] + methods[:shift]:
                if method is None:
                    continue
                elapsed, cleanup = method(src)
                cleanup()
                runs.append((label, elapsed))
            if rep:
                for label, elapsed in runs:
                    samples.setdefault((label, size_mb), []).append(elapsed)
        del src, touched
        gc.collect()
        print(f"[a] {size_mb} MB done", flush=True)

    largest = config.share_sizes_mb[-1]
    stdlib_median = median(samples[("stdlib: SharedMemory(create=True) + copy", largest)])
    headers = ["method", *(f"{size} MB" for size in config.share_sizes_mb)]
    headers += [f"GB/s at {largest} MB", f"{TIMES} stdlib at {largest} MB"]
    rows = []
    for label in [memcpy_label] + [label for label, _ in methods]:
        if (label, largest) not in samples:
            rows.append([label, *([NOT_INSTALLED] * len(config.share_sizes_mb)), DASH, DASH])
            continue
        cells = [fmt_time(samples[(label, size)]) for size in config.share_sizes_mb]
        mid = median(samples[(label, largest)])
        rows.append(
            [label, *cells, f"{largest * MB / mid / 1e9:.2f}", fmt_ratio(mid / stdlib_median)]
        )

    ours = median(samples[("**ours**: SharedMemoryArray.copy", largest)])
    peer_labels = [label for label, _ in methods[4:] if (label, largest) in samples]
    fastest_peer = min(median(samples[(label, largest)]) for label in peer_labels)
    report.figures["copy_vs_stdlib"] = ours / stdlib_median
    report.figures["copy_vs_fastest_peer"] = ours / fastest_peer
    report.figures["copy_size_mb"] = largest
    section = Section(
        "a. Share cost",
        [
            "Time to put a float64 array of each size into shared memory, from a touched "
            "private array; every segment or file is removed after each repetition "
            "(removal is not timed).",
            f"Repetitions per size: {', '.join(map(str, config.share_reps))} "
            f"(after one untimed warm-up); medians with the min{DASH}max range.",
        ],
    )
    section.tables.append(markdown_table(headers, rows))
    section.notes.append(
        f"ours / fastest installed peer at {largest} MB: "
        f"{fmt_ratio(report.figures['copy_vs_fastest_peer'])}."
    )
    if torch is not None:
        section.notes.append(
            f"torch copies with its own thread pool ({torch.get_num_threads()} threads); "
            "the others copy on one thread."
        )
    report.add(section)


# --------------------------------------------------------------------------- b. hand-off


def task_nothing(i: int) -> float:
    """Hand-off task that receives an int and reads no array."""
    return float(i)


def task_ours(task: tuple[SharedMemoryArray[Any], int]) -> float:
    """Hand-off task: our handle, attached (or found in the cache) and read once."""
    handle, i = task
    array = handle.as_array()
    return float(array[i % array.shape[0], 0])


def task_handle_unused(task: tuple[SharedMemoryArray[Any], int]) -> float:
    """Hand-off task that receives our handle but never maps it: the transport cost alone."""
    _handle, i = task
    return float(i)


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


@dataclass
class HandoffRow:
    """One way of handing the array to the pool's tasks."""

    label: str
    function: Callable[[Any], float] | None
    tasks: list[Any]
    expected: float


def _expected(data: np.ndarray[Any, Any], count: int) -> float:
    return math.fsum(data[np.arange(count) % data.shape[0], 0].tolist())


def _handoff_peer_rows(
    config: Config, peers: Peers, data: np.ndarray[Any, Any], cleanups: list[Cleanup]
) -> list[HandoffRow]:
    """The optional peers' hand-off rows (a "not installed" row for each missing one)."""
    count = config.handoff_tasks
    rows: list[HandoffRow] = []
    sharedarray = peers.get("SharedArray")
    if sharedarray is None:
        rows.append(HandoffRow("SharedArray: attach per task", None, [], 0.0))
    else:
        name = fresh_name("sa")
        view = sharedarray.create("shm://" + name, data.shape, data.dtype)
        view[...] = data
        del view
        cleanups.append(lambda: sharedarray.delete("shm://" + name))
        rows.append(
            HandoffRow(
                "SharedArray: attach per task",
                task_sharedarray,
                [(name, i) for i in range(count)],
                _expected(data, count),
            )
        )
    joblib = peers.get("joblib")
    if joblib is None:
        rows.append(HandoffRow("joblib: load(mmap_mode='r') per task", None, [], 0.0))
    else:
        path = os.path.join(SHM_DIR, fresh_name("joblib") + ".joblib")
        written = joblib.dump(data, path)
        cleanups.append(lambda: _unlink_all(written))
        rows.append(
            HandoffRow(
                "joblib: load(mmap_mode='r') per task",
                task_joblib,
                [(path, i) for i in range(count)],
                _expected(data, count),
            )
        )
    torch = peers.get("torch")
    torch_count = config.handoff_torch_tasks
    if torch is None:
        rows.append(HandoffRow("torch: shared tensor", None, [], 0.0))
    else:
        tensor = torch.from_numpy(data).share_memory_()
        rows.append(
            HandoffRow(
                f"torch: shared tensor ({torch_count} tasks)",
                task_torch,
                [(tensor, i) for i in range(torch_count)],
                _expected(data, torch_count),
            )
        )
    return rows


def _handoff_rows(
    config: Config, peers: Peers, data: np.ndarray[Any, Any], cleanups: list[Cleanup]
) -> list[HandoffRow]:
    """Build every row's shared object and task list (the parent's setup, not timed)."""
    count = config.handoff_tasks
    rows = [
        HandoffRow(
            "passing nothing (task = an int)",
            task_nothing,
            list(range(count)),
            math.fsum(float(i) for i in range(count)),
        )
    ]
    handle = SharedMemoryArray.copy(None, data)
    cleanups.append(handle.close)
    rows.append(
        HandoffRow(
            "**ours**: (handle, i)",
            task_ours,
            [(handle, i) for i in range(count)],
            _expected(data, count),
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
            _expected(data, count),
        )
    )
    rows += _handoff_peer_rows(config, peers, data, cleanups)
    pickle_count = config.handoff_pickle_tasks
    rows.append(
        HandoffRow(
            f"pickling the array ({pickle_count} tasks)",
            task_pickled,
            [(data, i) for i in range(pickle_count)],
            _expected(data, pickle_count),
        )
    )
    return rows


HANDOFF_CHUNKSIZES: tuple[int | None, ...] = (1, None)  # None: Pool.map's default


def _time_handoff(
    config: Config, peers: Peers, ctx: Any
) -> dict[tuple[str, int | None], list[float]]:
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
            rows = _handoff_rows(config, peers, data, cleanups)
            for row in rows:  # one untimed round: first attaches, imports, caches
                if row.function is not None:
                    pool.map(row.function, row.tasks[:50], 1)
            for rep in range(config.handoff_reps):
                shift = rep % len(rows)  # rotate the order, so no row always follows another
                for chunksize in HANDOFF_CHUNKSIZES:
                    for row in rows[shift:] + rows[:shift]:
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
                print(f"[b] repetition {rep + 1}/{config.handoff_reps} done", flush=True)
            del rows
    finally:
        for cleanup in reversed(cleanups):
            cleanup()
        gc.collect()
    return samples


def bench_handoff(config: Config, peers: Peers, ctx: Any, report: Report) -> None:
    """Section b: per-task cost of handing the array to ``Pool(2).map``."""
    samples = _time_handoff(config, peers, ctx)
    nothing = "passing nothing (task = an int)"
    per_task, ratio_head = f"{MICRO}s/task", f"{TIMES} nothing"
    headers = ["task carries", f"chunksize=1: {per_task}", ratio_head]
    headers += [f"default chunksize: {per_task}", ratio_head]
    table = []
    labels = list(dict.fromkeys(label for label, _ in samples))
    for label in labels:
        cells = [label]
        for chunksize in HANDOFF_CHUNKSIZES:
            values = samples[(label, chunksize)]
            ratio = median(values) / median(samples[(nothing, chunksize)])
            cells += [fmt_range(values, "", 1e6), fmt_ratio(ratio)]
        table.append(cells)
    for missing in ("SharedArray: attach per task", "joblib: load(mmap_mode='r') per task"):
        if missing not in labels:
            table.append([missing, NOT_INSTALLED, DASH, NOT_INSTALLED, DASH])
    if not any(label.startswith("torch") for label in labels):
        table.append(["torch: shared tensor", NOT_INSTALLED, DASH, NOT_INSTALLED, DASH])
    ours = "**ours**: (handle, i)"
    report.figures["handoff_1"] = median(samples[(ours, 1)]) / median(samples[(nothing, 1)])
    report.figures["handoff_default"] = median(samples[(ours, None)]) / median(
        samples[(nothing, None)]
    )
    count = config.handoff_tasks
    section = Section(
        "b. Per-task hand-off",
        [
            f"`multiprocessing.Pool(2).map` over {count:,} tasks ({ctx.get_start_method()} "
            f"start method); each task reads one element `a[i % n, 0]` of a "
            f"{config.handoff_mb} MB float64 array "
            f"({rows_for(config.handoff_mb)} {TIMES} {COLUMNS}). "
            "Wall time of the whole `map` divided by the number of tasks; "
            f"{config.handoff_reps} repetitions, rows interleaved, after one untimed warm-up "
            "round; every result is checked.",
            f"Default chunksize is `ceil(tasks / (4 * 2))`: {math.ceil(count / 8)} for "
            f"{count:,} tasks.",
        ],
    )
    section.tables.append(markdown_table(headers, table))
    section.notes.append(
        '"Handle sent but never mapped" is the transport part of ours: the parent '
        "pickles the handle and the worker unpickles it, but the task never calls "
        "`as_array()`."
    )
    section.notes.append(
        f"Pickling the array ships {config.handoff_mb} MB per task, so that row runs only "
        f"{config.handoff_pickle_tasks} tasks (default chunksize "
        f"{math.ceil(config.handoff_pickle_tasks / 8)}: the tasks of one chunk share one "
        "pickled copy, so its per-task time there is lower)."
    )
    if peers.get("torch") is not None:
        section.notes.append(
            f"The torch row runs {config.handoff_torch_tasks} tasks: each pickled tensor "
            "passes a file descriptor through multiprocessing's resource sharer "
            "(torch's default `file_descriptor` strategy)."
        )
    report.add(section)


# --------------------------------------------------------------------------- c. attach


def _per_iteration(loop: Callable[[int], float | None], iterations: int) -> float:
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


class AttachLoops:
    """The loops timed in section c, each ``loop(n)`` doing ``n`` iterations.

    Used in a process that owns neither segment.  A loop that needs untimed setup
    returns its own elapsed seconds (see `_per_iteration`).
    """

    def __init__(self, our_name: str, std_name: str, payload: bytes, others: list[str]) -> None:
        self.our_name = our_name
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

    def ours_cold(self, n: int) -> None:
        """Attach by name with nothing cached."""
        for _ in range(n):
            release_cached_mappings()
            handle = SharedMemoryArray.attach(self.our_name)
            array = handle.as_array()
            del array
            handle.close()
        release_cached_mappings()

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


ATTACH_FLOOR = "raw floor: shm_open + fstat + mmap + close; munmap"
ATTACH_COLD = "**ours** cold: release_cached_mappings(); attach(name).as_array(); close()"
ATTACH_OTHERS = 8  # small segments cached in the child for the "crowded cache" row


def attach_timings(
    our_name: str,
    std_name: str,
    payload: bytes,
    others: list[str],
    counts: tuple[int, int, int],
) -> dict[str, list[float]]:
    """In a process that owns neither segment: seconds per iteration of each loop.

    ``counts`` is (cold iterations, warm iterations, repetitions).
    """
    iters, warm_iters, reps = counts
    release_cached_mappings()  # a fork()ed child starts with its parent's cache
    loops = AttachLoops(our_name, std_name, payload, others)
    cold: list[tuple[str, Callable[[int], float | None]]] = [
        (ATTACH_FLOOR, loops.raw_floor),
        ("raw floor + np.frombuffer view", loops.raw_floor_view),
        (ATTACH_COLD, loops.ours_cold),
        ("**ours** cold: the same with attach_unsafe(name)", loops.ours_cold_unsafe),
        (
            "**ours** cold: release_cached_mappings(); pickle.loads(payload).as_array()",
            loops.ours_cold_pickle,
        ),
        ("stdlib: SharedMemory(name) + np.frombuffer view; close()", loops.stdlib_attach),
    ]
    warm: list[tuple[str, Callable[[int], float | None]]] = [
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
            samples.setdefault(label, []).append(_per_iteration(loop, iters))
        for label, loop in warm:
            samples.setdefault(label, []).append(_per_iteration(loop, warm_iters))
    return samples


def bench_attach(config: Config, ctx: Any, report: Report) -> None:
    """Section c: cold and warm attach cost in a process that does not own the segment."""
    data = make_data(rows_for(config.attach_mb))
    ours = SharedMemoryArray.copy(None, data)
    # The stdlib segment registers with the resource tracker, which the child shares:
    # the child's attaches re-register the same name (a set), and this process's
    # unlink() unregisters it, so nothing is unlinked early or reported as leaked.
    std = shared_memory.SharedMemory(name=fresh_name("std"), create=True, size=ours.nbytes)
    others = [SharedMemoryArray.copy(None, np.zeros(16)) for _ in range(ATTACH_OTHERS)]
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
                ),
            )
    finally:
        for other in others:
            other.close()
        ours.close()
        std.close()
        std.unlink()
    floor = median(samples[ATTACH_FLOOR])
    report.figures["cold_attach"] = median(samples[ATTACH_COLD]) / floor
    rows = [
        [label, fmt_range(values, "", 1e6), fmt_ratio(median(values) / floor)]
        for label, values in samples.items()
    ]
    section = Section(
        "c. Attach",
        [
            f"In a fresh process that owns no segment ({ctx.get_start_method()} start "
            f"method), a {config.attach_mb} MB segment; {MICRO}s per attach, "
            f"median (min{DASH}max) of "
            f"{config.attach_reps} repetitions of {config.attach_iters:,} iterations (cold "
            f"rows) or {config.attach_warm_iters:,} (warm rows and pieces), garbage "
            "collector off while timing, after one warm-up pass.",
            "Cold = nothing cached: every iteration maps the segment and unmaps it "
            "(`release_cached_mappings()` drops our cache). Warm = the mapping is cached "
            "in this process, as in a pool worker after its first task.",
        ],
    )
    section.tables.append(
        markdown_table(["operation", f"{MICRO}s per iteration", f"{TIMES} raw floor"], rows)
    )
    section.notes.append(
        "The stdlib row includes its resource tracker registration (Python < 3.13 "
        "registers on attach): the segment was created by the parent, whose tracker the "
        "child shares, so the parent's `unlink()` unregisters it and nothing is unlinked "
        "early or warned about."
    )
    section.notes.append(
        f"The crowded row: the child has also attached {ATTACH_OTHERS} other small segments "
        "(as a worker serving several arrays would); they stay in its cache meanwhile."
    )
    section.notes.append(
        "`payload` is `pickle.dumps(handle)` "
        f"({len(pickle.dumps(ours))} bytes), as a pool ships it."
    )
    report.add(section)


# --------------------------------------------------------------------------- d. memory


def mem_idle() -> tuple[float, int]:
    """Memory task reading nothing: the baseline of the processes themselves."""
    return 0.0, os.getpid()


def mem_ours(handle: SharedMemoryArray[Any]) -> tuple[float, int]:
    """Memory task: sum the whole array through our handle and keep the view."""
    array = handle.as_array()
    _HELD.append(array)
    return float(array.sum()), os.getpid()


def mem_pickled(array: np.ndarray[Any, Any]) -> tuple[float, int]:
    """Memory task: the array arrived pickled; sum it and keep it."""
    _HELD.append(array)
    return float(array.sum()), os.getpid()


def mem_stdlib(name: str, shape: tuple[int, ...], dtype: str) -> tuple[float, int]:
    """Memory task: attach a stdlib SharedMemory by name, sum it, keep it mapped."""
    shm = shared_memory.SharedMemory(name)
    _CLOSERS.append(shm.close)
    array: np.ndarray[Any, Any] = np.ndarray(shape, dtype, buffer=shm.buf)
    _HELD.append(array)
    return float(array.sum()), os.getpid()


def mem_joblib(path: str) -> tuple[float, int]:
    """Memory task: ``joblib.load(path, mmap_mode='r')``, sum it, keep it mapped."""
    import joblib

    array = joblib.load(path, mmap_mode="r")
    _HELD.append(array)
    return float(array.sum()), os.getpid()


def mem_sharedarray(name: str) -> tuple[float, int]:
    """Memory task: ``SharedArray.attach``, sum it, keep it mapped."""
    import SharedArray

    array = SharedArray.attach("shm://" + name)
    _HELD.append(array)
    return float(array.sum()), os.getpid()


def mem_torch(tensor: Any) -> tuple[float, int]:
    """Memory task: a shared torch tensor; sum it (through NumPy) and keep it."""
    array = tensor.numpy()
    _HELD.append((tensor, array))
    return float(array.sum()), os.getpid()


MemorySetup = Callable[[np.ndarray[Any, Any]], tuple[Callable[..., Any], tuple[Any, ...], Cleanup]]


def _setup_idle(data: np.ndarray[Any, Any]) -> tuple[Callable[..., Any], tuple[Any, ...], Cleanup]:
    return mem_idle, (), lambda: None


def _setup_ours(data: np.ndarray[Any, Any]) -> tuple[Callable[..., Any], tuple[Any, ...], Cleanup]:
    handle = SharedMemoryArray.copy(None, data)
    return mem_ours, (handle,), handle.close


def _setup_pickled(
    data: np.ndarray[Any, Any],
) -> tuple[Callable[..., Any], tuple[Any, ...], Cleanup]:
    return mem_pickled, (data,), lambda: None


def _setup_stdlib(
    data: np.ndarray[Any, Any],
) -> tuple[Callable[..., Any], tuple[Any, ...], Cleanup]:
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
    def setup(data: np.ndarray[Any, Any]) -> tuple[Callable[..., Any], tuple[Any, ...], Cleanup]:
        path = os.path.join(SHM_DIR, fresh_name("joblib") + ".joblib")
        written = joblib.dump(data, path)

        return mem_joblib, (path,), lambda: _unlink_all(written)

    return setup


def _setup_sharedarray(sharedarray: ModuleType) -> MemorySetup:
    def setup(data: np.ndarray[Any, Any]) -> tuple[Callable[..., Any], tuple[Any, ...], Cleanup]:
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
    def setup(data: np.ndarray[Any, Any]) -> tuple[Callable[..., Any], tuple[Any, ...], Cleanup]:
        tensor = torch.from_numpy(data).share_memory_()

        def cleanup() -> None:
            nonlocal tensor
            del tensor

        return mem_torch, (tensor,), cleanup

    return setup


def _measure_memory(
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


def bench_memory(config: Config, peers: Peers, ctx: Any, report: Report) -> None:
    """Section d: total PSS of the parent and its workers, each reading the whole array."""
    rows = rows_for(config.memory_mb)
    nbytes = rows * COLUMNS * 8
    joblib, sharedarray, torch = peers.get("joblib"), peers.get("SharedArray"), peers.get("torch")
    methods: list[tuple[str, MemorySetup | None, bool]] = [
        ("idle workers, no array (baseline)", _setup_idle, False),
        ("**ours**: handle, as_array().sum()", _setup_ours, False),
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
            total, _parent = _measure_memory(ctx, config.memory_workers, rows, setup, keep_source)
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
    ours = "**ours**: handle, as_array().sum()"
    report.figures["pss"] = median(excess[ours]) / nbytes
    report.figures["pss_total"] = median(totals[ours]) / nbytes
    section = Section(
        "d. Memory",
        [
            f"Total PSS (sum of `Pss` in `/proc/<pid>/smaps_rollup`) of the parent and "
            f"{config.memory_workers} worker processes ({ctx.get_start_method()} start method) "
            f"while each worker holds a view of, and has summed, the whole "
            f"{nbytes / MB:.0f} MB ({nbytes / MIB:.0f} MiB) float64 array. "
            f"Fresh workers for every measurement, started before the array exists; "
            f"{config.memory_reps} repetition(s); every sum is checked.",
            "The shared ways drop the parent's private source array after sharing it; "
            'pickling keeps it (it is what the parent sends). "Array-attributable" is the '
            "total minus the idle baseline measured in the same repetition (the "
            "interpreters, NumPy and the peers' imports).",
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


# --------------------------------------------------------------------------- e. row sum


def rowsum_task(handle: SharedMemoryArray[Any]) -> np.ndarray[Any, Any]:
    """Row sums of the rows a (region) handle covers."""
    sums: np.ndarray[Any, Any] = handle.as_array().sum(axis=1)
    return sums


def bandwidth_setup(nbytes: int) -> int:
    """In a worker: make and touch a private array for `bandwidth_sum`."""
    release_held()
    array = np.ones(nbytes // 8)
    _HELD.append(array)
    return array.nbytes


def bandwidth_sum() -> float:
    """In a worker: ``np.sum`` over the private array from `bandwidth_setup`."""
    return float(np.sum(_HELD[0]))


def _timed(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = run()
    return time.perf_counter() - start, value


def bench_rowsum(config: Config, ctx: Any, report: Report) -> None:
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

            for run in (one, two):  # warm-up: attach and map in both workers
                if not np.array_equal(run(), expected):
                    raise AssertionError("row sums differ")
            for _ in range(config.rowsum_reps):
                elapsed, sums = _timed(one)
                one_samples.append(elapsed)
                elapsed, sums = _timed(two)
                two_samples.append(elapsed)
                if not np.array_equal(sums, expected):
                    raise AssertionError("row sums differ")
            shared_nbytes = shared.nbytes
            workers.call_each([(release_held, ())] * 2)
            bw_bytes = config.bandwidth_mb * MB
            workers.call_each([(bandwidth_setup, (bw_bytes,))] * 2)
            workers.call_each([(bandwidth_sum, ())] * 2)  # warm-up
            for _ in range(config.rowsum_reps):
                bw_one.append(_timed(lambda: workers.call_each([(bandwidth_sum, ())]))[0])
                bw_two.append(_timed(lambda: workers.call_each([(bandwidth_sum, ())] * 2))[0])
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
            "in shared memory: one worker process sums every row through the handle, against two "
            "worker processes each summing half the rows through a region handle "
            "(`shared[:half]`, `shared[half:]`). Wall time from sending the tasks to "
            f"receiving every result; {config.rowsum_reps} repetitions after a warm-up, "
            "results checked.",
            "The ideal is the same machine's memory bandwidth scaling, measured in the same "
            "run by the same two workers: aggregate read bandwidth of two processes summing "
            "private touched arrays at once, over one process alone.",
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
            "Two processes read hardly faster than one on this machine (the bandwidth "
            f"ideal is {fmt_ratio(ideal)}): the row sum is bound by memory bandwidth, so "
            "no way of sharing can speed it up here, and the target only checks that "
            "sharing costs nothing on top."
        )
    report.add(section)


# --------------------------------------------------------------------------- f. dask

DASK_TITLE = "f. Dask: publish() against scatter(broadcast=True)"
DASK_PUBLISH = "**ours**: publish(client, a)"
DASK_SCATTER = "scatter(a, broadcast=True)"
DASK_SCATTER_UNHASHED = "scatter(a, broadcast=True, hash=False)"
DASK_WAIT = 60.0  # seconds to wait for a released scattered array to leave every worker


def dask_sum(data: Any, keep: bool) -> tuple[float, int]:
    """Dask task: sum the whole array (scattered, or a PublishedArray's view); maybe keep it.

    A kept array stays referenced by the worker until `dask_drop_kept`.
    """
    from distributed import get_worker

    array = data.as_array() if hasattr(data, "as_array") else data
    if keep:
        worker = get_worker()
        worker._smabench_kept = [*getattr(worker, "_smabench_kept", []), array]
    return float(array.sum()), os.getpid()


def dask_drop_kept(dask_worker: Any) -> None:
    """``client.run`` function: drop what `dask_sum` kept, then collect garbage."""
    dask_worker.__dict__.pop("_smabench_kept", None)
    gc.collect()


def dask_holds(key: Any, dask_worker: Any) -> bool:
    """``client.run`` function: whether this worker still stores ``key``."""
    return key in dask_worker.data


def shm_used() -> int:
    """Bytes in use in /dev/shm (by anyone: other processes' segments count too)."""
    stat = os.statvfs(SHM_DIR)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


@contextlib.contextmanager
def dask_cluster(distributed: ModuleType, workers: int) -> Iterator[Any]:
    """A fresh ``LocalCluster`` of single-threaded worker processes, and its client."""
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(
            distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            )
        )
        client = stack.enter_context(distributed.Client(cluster))
        client.wait_for_workers(workers)
        yield client


def _dask_hand_off(client: Any, smd: ModuleType, how: str, data: np.ndarray[Any, Any]) -> Any:
    if how == DASK_PUBLISH:
        return smd.publish(client, data)
    return client.scatter(data, broadcast=True, hash=how != DASK_SCATTER_UNHASHED)


def _dask_round(
    client: Any, handed: Any, addresses: Sequence[str], expected: float, keep: bool
) -> None:
    """One task per worker, pinned to it, each summing the whole array; checks the sums."""
    futures = [
        client.submit(
            dask_sum, handed, keep, workers=[address], allow_other_workers=False, pure=False
        )
        for address in addresses
    ]
    answers = client.gather(futures)
    if any(total != expected for total, _pid in answers):
        raise AssertionError(f"a Dask task summed {answers}, not {expected}")
    if len({pid for _total, pid in answers}) != len(addresses):
        raise AssertionError(f"the tasks did not run one per worker process: {answers}")


def _dask_release(client: Any, how: str, handed: Any) -> None:
    """Free a hand-off and wait until every worker has let go of it."""
    if how == DASK_PUBLISH:
        handed.release()
    else:
        key = handed.key
        handed.release()
        deadline = time.monotonic() + DASK_WAIT
        while any(client.run(dask_holds, key).values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers still hold the released {key!r}")
            time.sleep(0.05)
    client.run(gc.collect)


def _dask_warm_up(client: Any, smd: ModuleType, addresses: Sequence[str]) -> None:
    """Run both hand-offs once on a small array: imports, plugin registration, pickling."""
    small = np.arange(1000.0)
    for how in (DASK_PUBLISH, DASK_SCATTER):
        handed = _dask_hand_off(client, smd, how, small)
        _dask_round(client, handed, addresses, float(small.sum()), keep=False)
        _dask_release(client, how, handed)


def _dask_pss(
    distributed: ModuleType,
    smd: ModuleType,
    how: str,
    data: np.ndarray[Any, Any],
    expected: float,
    workers: int,
) -> tuple[int, int, int, int]:
    """One measurement in a fresh cluster; all in bytes.

    Returns the PSS the hand-off and one task per worker (each summing the whole
    array and keeping it) added to the workers together and to this process (the
    client, which also runs the scheduler), the growth of /dev/shm, and the PSS
    of the idle workers before the hand-off.
    """
    with dask_cluster(distributed, workers) as client:
        pids: dict[str, int] = client.run(os.getpid)
        addresses = sorted(pids)
        _dask_warm_up(client, smd, addresses)
        gc.collect()
        idle = sum(pss_bytes(pids[address]) for address in addresses)
        client_before, shm_before = pss_bytes(os.getpid()), shm_used()
        handed = _dask_hand_off(client, smd, how, data)
        try:
            if how != DASK_PUBLISH:
                holders = client.who_has([handed])[handed.key]
                if len(holders) != workers:
                    raise AssertionError(f"scatter(broadcast=True) reached {holders} only")
            _dask_round(client, handed, addresses, expected, keep=True)
            client.run(gc.collect)
            gc.collect()
            added = sum(pss_bytes(pids[address]) for address in addresses) - idle
            client_added = pss_bytes(os.getpid()) - client_before
            shm_added = shm_used() - shm_before
        finally:
            client.run(dask_drop_kept)
            _dask_release(client, how, handed)
    return added, client_added, shm_added, idle


def _dask_times(
    distributed: ModuleType, smd: ModuleType, config: Config, data: np.ndarray[Any, Any]
) -> dict[str, list[tuple[float, float, float]]]:
    """Per hand-off, (hand-off, first round, second round) seconds of each repetition.

    One cluster for all; the hand-offs alternate their order repetition by repetition,
    and each is freed (and gone from every worker) before the next starts.
    """
    hows = [DASK_PUBLISH, DASK_SCATTER, DASK_SCATTER_UNHASHED]
    samples: dict[str, list[tuple[float, float, float]]] = {how: [] for how in hows}
    with dask_cluster(distributed, config.dask_workers) as client:
        addresses = sorted(client.run(os.getpid))
        _dask_warm_up(client, smd, addresses)
        for rep in range(config.dask_time_reps + 1):  # repetition 0: untimed warm-up
            data[0, 0] = float(rep)  # a new token each time: hashed scatters never reuse a key
            expected = float(data.sum())
            for how in hows if rep % 2 else hows[::-1]:
                gc.collect()
                start = time.perf_counter()
                handed = _dask_hand_off(client, smd, how, data)
                handed_at = time.perf_counter()
                try:
                    _dask_round(client, handed, addresses, expected, keep=False)
                    first_at = time.perf_counter()
                    _dask_round(client, handed, addresses, expected, keep=False)
                    second_at = time.perf_counter()
                finally:
                    _dask_release(client, how, handed)
                    del handed
                if rep:
                    samples[how].append(
                        (handed_at - start, first_at - handed_at, second_at - first_at)
                    )
            print(f"[f] timing repetition {rep}/{config.dask_time_reps} done", flush=True)
    return samples


def bench_dask(config: Config, report: Report) -> None:
    """Section f: publish() against scatter(broadcast=True) on a Dask LocalCluster."""
    try:
        distributed = importlib.import_module("distributed")
        smd = importlib.import_module("shared_memory_array.dask")
    except ImportError as exc:
        report.add(Section(DASK_TITLE, [f"Not run: Dask distributed is {NOT_INSTALLED} ({exc})."]))
        return
    workers = config.dask_workers
    rows = rows_for(config.dask_mb)
    # random whole numbers: incompressible, and summed exactly in any order or alignment
    data = np.random.default_rng(0).integers(0, 1 << 20, (rows, COLUMNS)).astype(np.float64)
    nbytes = data.nbytes
    expected = float(data.sum())
    pss: dict[str, list[tuple[int, int, int, int]]] = {DASK_PUBLISH: [], DASK_SCATTER: []}
    for rep in range(config.dask_pss_reps):
        for how in list(pss) if rep % 2 == 0 else list(pss)[::-1]:
            pss[how].append(_dask_pss(distributed, smd, how, data, expected, workers))
        print(f"[f] PSS repetition {rep + 1}/{config.dask_pss_reps} done", flush=True)
    times = _dask_times(distributed, smd, config, data)
    tokenize = importlib.import_module("dask.base").tokenize
    hashing = [_timed(lambda: tokenize(data))[0] for _ in range(3)]

    def column(samples: Sequence[tuple[float, ...]], index: int) -> list[float]:
        return [float(sample[index]) for sample in samples]

    pss_rows = []
    for how, samples in pss.items():
        added, client_added, shm_added = (column(samples, index) for index in range(3))
        both = [worker + client for worker, client in zip(added, client_added)]
        pss_rows.append(
            [
                how,
                fmt_range(added, "", 1 / MIB),
                fmt_ratio(median(added) / nbytes),
                fmt_range(client_added, "", 1 / MIB),
                fmt_ratio(median(both) / nbytes),
                fmt_range(shm_added, "", 1 / MIB),
            ]
        )
    scatter_handoff = median(column(times[DASK_SCATTER], 0))
    scatter_total = median([sample[0] + sample[1] for sample in times[DASK_SCATTER]])
    time_rows = []
    for how, samples in times.items():
        handoff = column(samples, 0)
        total = [sample[0] + sample[1] for sample in samples]
        time_rows.append(
            [
                how,
                fmt_time(handoff),
                fmt_ratio(median(handoff) / scatter_handoff),
                fmt_time(column(samples, 1)),
                fmt_time(column(samples, 2)),
                fmt_time(total),
                fmt_ratio(median(total) / scatter_total),
            ]
        )
    publish_added = median(column(pss[DASK_PUBLISH], 0))
    scatter_added = median(column(pss[DASK_SCATTER], 0))
    report.figures["dask_pss"] = publish_added / nbytes
    report.figures["dask_pss_scatter"] = scatter_added / nbytes
    idle = column(pss[DASK_PUBLISH] + pss[DASK_SCATTER], 3)
    versions = ", ".join(f"{name} {_version(name)}" for name in ("dask", "distributed"))
    method = importlib.import_module("dask").config.get("distributed.worker.multiprocessing-method")
    section = Section(
        DASK_TITLE,
        [
            f"A `distributed.LocalCluster(n_workers={workers}, threads_per_worker=1, "
            "processes=True, dashboard_address=':0')` (worker processes started with "
            f"{method}; {versions}) gets a {nbytes / MB:.0f} MB ({nbytes / MIB:.0f} MiB) "
            f"float64 array of random whole numbers ({rows:,} {TIMES} {COLUMNS:,}) from the client "
            f"in two ways: `client.scatter(a, broadcast=True)`, which gives every worker "
            "its own copy, and `shared_memory_array.dask.publish(client, a)`, which "
            "places one read-only copy in /dev/shm for this host. Then one task per "
            "worker, pinned to it (`workers=[address]`), sums the whole array: the "
            "scattered array itself, or `published.as_array()`. Every sum is checked.",
            "**Memory**: a fresh cluster for every measurement, warmed up with both "
            "hand-offs of a small array (imports, plugin registration), then the idle "
            "PSS (`Pss` of `/proc/<pid>/smaps_rollup`) of each process; then the "
            "hand-off and the tasks, which keep what they summed referenced in their "
            "worker (and `client.who_has` confirms every worker stores the scattered "
            "array); after `gc.collect()` everywhere, PSS again. Reported: PSS added, "
            f"summed over the {workers} worker processes, and separately the client "
            "process's (it also runs the scheduler, and keeps the source array "
            "throughout, before the baseline too), and how much /dev/shm grew (a "
            "segment counts in PSS only while mapped). "
            f"{config.dask_pss_reps} repetition(s), the two ways alternating.",
            "**Time**: one cluster, warmed up, then the hand-off (until `scatter` or "
            "`publish` returns; scatter's default `hash=True` first hashes the whole "
            "array to name it, so a row without it too), then two rounds of the tasks "
            "above (without keeping anything): the first pays for mapping and "
            "faulting in the shared pages, the second is warm. Every hand-off is "
            "freed and gone from every worker before the next one starts. "
            f"{config.dask_time_reps} repetitions after an untimed full-size one, the "
            f"ways interleaved in alternating order; medians with the min{DASH}max range.",
        ],
    )
    section.tables.append(
        markdown_table(
            [
                "hand-off",
                "workers' PSS added, MiB",
                f"{TIMES} array",
                "client's PSS added, MiB",
                f"workers + client, {TIMES} array",
                "/dev/shm growth, MiB",
            ],
            pss_rows,
        )
    )
    section.tables.append(
        markdown_table(
            [
                "hand-off",
                "hand-off time",
                f"{TIMES} scatter",
                "first round of tasks",
                "second round",
                "hand-off + first round",
                f"{TIMES} scatter",
            ],
            time_rows,
        )
    )
    section.notes.append(
        f"Idle workers before the hand-off: {fmt_range(idle, 'MiB', 1 / MIB)} of PSS "
        f"together (the baseline subtracted above). publish() adds "
        f"{publish_added / scatter_added:.2f} of what scatter(broadcast=True) adds to "
        "the workers."
    )
    section.notes.append(
        "/dev/shm growth is measured for the whole machine: another process making or "
        "removing segments meanwhile would show in it."
    )
    section.notes.append(
        f"Hashing: `dask.base.tokenize(a)`, which scatter's default `hash=True` runs to "
        f"name the array, takes {fmt_time(hashing)} here (3 runs); the rest of any gap "
        "between the two scatter rows is the variation of their transfers (see the "
        "ranges): the array goes over TCP (loopback) from the client to the scheduler, "
        f"on to one worker, then from worker to worker until all {workers} hold it."
    )
    section.notes.append(
        "All workers share this one host, so publish() writes the one copy from the "
        "client itself and sends nothing over the network; on a cluster of several "
        "hosts each other host gets the array once over the network (not measured here)."
    )
    report.add(section)


# --------------------------------------------------------------------------- machine facts


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "unknown"


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _meminfo(key: str) -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def _load() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def _version(name: str) -> str:
    """Installed version of a distribution, or "not installed"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def machine_facts(
    peers: Peers, ctx: Any, command: str, started: float, load_at_start: str
) -> list[tuple[str, str]]:
    """What the run ran on and with, for the top of RESULTS.md."""
    shm = os.statvfs(SHM_DIR)
    torch = peers.get("torch")
    torch_version = peers.version("torch")
    if torch is not None:
        torch_version += f" ({torch.get_num_threads()} threads)"
    return [
        ("date (UTC)", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("command", f"`{command}`"),
        ("CPU", _cpu_model()),
        ("cores", f"{os.cpu_count()} logical ({len(os.sched_getaffinity(0))} usable)"),
        ("RAM", f"{_meminfo('MemTotal') / (1 << 30):.1f} GiB"),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("start method", ctx.get_start_method()),
        ("numpy", np.__version__),
        (
            "shared_memory_array",
            f"{shared_memory_array.__version__} (git {_git_commit()}, working tree as run)",
        ),
        ("joblib", peers.version("joblib")),
        ("SharedArray", peers.version("SharedArray")),
        ("torch", torch_version),
        ("dask / distributed", f"{_version('dask')} / {_version('distributed')}"),
        ("/dev/shm", f"tmpfs, {shm.f_blocks * shm.f_frsize / (1 << 30):.1f} GiB"),
        (
            "transparent huge pages",
            f"anon: {_read('/sys/kernel/mm/transparent_hugepage/enabled')}; shmem: "
            f"{_read('/sys/kernel/mm/transparent_hugepage/shmem_enabled')}",
        ),
        ("load average at the start (1/5/15 min)", load_at_start),
        ("load average at the end (1/5/15 min)", _load()),
        ("wall time of the run", f"{time.perf_counter() - started:.0f} s"),
    ]


def build_targets(figures: dict[str, float], config: Config) -> list[Target]:
    """The library's targets, with this run's ratios."""
    size = int(figures.get("copy_size_mb", config.share_sizes_mb[-1]))
    return [
        Target(
            "hand-off, chunksize=1: ours / passing nothing",
            figures.get("handoff_1"),
            1.15,
            True,
            f"median {MICRO}s per task, section b",
            "b",
        ),
        Target(
            "hand-off, default chunksize: ours / passing nothing",
            figures.get("handoff_default"),
            4.0,
            True,
            f"median {MICRO}s per task, section b",
            "b",
        ),
        Target(
            "cold attach: ours / raw floor",
            figures.get("cold_attach"),
            1.3,
            True,
            "attach(name).as_array() with the cache released, section c",
            "c",
        ),
        Target(
            f"copy() of {size} MB: ours / stdlib create+copy",
            figures.get("copy_vs_stdlib"),
            0.5,
            True,
            "median time, section a",
            "a",
        ),
        Target(
            f"copy() of {size} MB: ours / fastest peer",
            figures.get("copy_vs_fastest_peer"),
            1.0,
            True,
            "below 1 = faster than every installed peer, section a",
            "a",
        ),
        Target(
            f"PSS, {config.memory_workers} workers reading the array: / array size",
            figures.get("pss"),
            1.02,
            True,
            "array-attributable PSS (total minus idle baseline), section d; total "
            f"PSS / array: {fmt_ratio(figures.get('pss_total'))}",
            "d",
        ),
        Target(
            "two-worker row sum: speedup / bandwidth ideal",
            figures.get("rowsum"),
            0.9,
            False,
            "section e",
            "e",
        ),
        Target(
            f"Dask, {config.dask_workers} workers reading the array: PSS added by "
            "publish() / array size",
            figures.get("dask_pss"),
            1.1,
            True,
            "summed over the worker processes, section f; scatter(broadcast=True) adds "
            f"{fmt_ratio(figures.get('dask_pss_scatter'))}",
            "f",
        ),
    ]


TARGET_HEADERS = ["target", "limit", "measured", "verdict", "measured as"]
ONE_RUN = "All figures come from the one run described below; compare ratios within it"
MERGED_RUNS = (
    "All figures come from the one run described below, except the sections that "
    "describe a run of their own (written with `--merge`); compare ratios within one run"
)


def target_rows(targets: Sequence[Target], how_suffix: str = "") -> list[list[str]]:
    """Cells of the Targets table."""
    return [
        [
            target.label,
            ("≤ " if target.at_most else "≥ ") + f"{target.limit:g}",
            fmt_ratio(target.measured),
            target.verdict(),
            target.how + how_suffix,
        ]
        for target in targets
    ]


def render_section(section: Section, own_run: Sequence[str] = ()) -> list[str]:
    """Lines of one section; ``own_run`` goes first, under the title."""
    lines = [f"## {section.title}", "", *own_run]
    for paragraph in section.intro:
        lines += [paragraph, ""]
    for table in section.tables:
        lines += [*table, ""]
    lines += [f"- {note}" for note in section.notes]
    if section.notes:
        lines.append("")
    return lines


def render_markdown(
    report: Report, facts: list[tuple[str, str]], targets: list[Target], config: Config
) -> str:
    """The whole RESULTS.md."""
    lines = [
        "# Benchmark results",
        "",
        "Generated by `benchmarks/run.py`"
        + (" (**--quick smoke run: small sizes, not representative**)" if config.quick else "")
        + "; do not edit by hand. What each table measures: "
        f"[README.md](README.md). {ONE_RUN}, not with other runs or machines.",
        "",
        "## Machine and run",
        "",
        *markdown_table(["", ""], [[key, value] for key, value in facts], numeric=False),
        "",
        "## Targets",
        "",
        *markdown_table(TARGET_HEADERS, target_rows(targets), numeric=False),
        "",
    ]
    for section in report.sections:
        lines += render_section(section)
    return "\n".join(lines)


def merge_markdown(
    existing: str,
    report: Report,
    facts: list[tuple[str, str]],
    targets: list[Target],
    config: Config,
) -> str:
    """``existing`` RESULTS.md with this run's sections and targets put in, the rest kept.

    A section replaces the one of the same title, or is added at the end; it starts
    with this run's facts and its own targets.  In the Targets table at the top, each
    target this run measured replaces its row (or is added), marked as a separate run.
    """
    lines = existing.rstrip("\n").split("\n")
    starts = [index for index, line in enumerate(lines) if line.startswith("## ")]
    if not starts:
        return render_markdown(report, facts, targets, config)
    preamble = [line.replace(ONE_RUN, MERGED_RUNS) for line in lines[: starts[0]]]
    blocks = [lines[start:end] for start, end in zip(starts, [*starts[1:], len(lines)])]
    quick = " (**--quick smoke run: small sizes, not representative**)" if config.quick else ""
    for section in report.sections:
        key = section.title.split(".", 1)[0]
        own = [target for target in targets if target.section == key]
        own_run = [
            f"Measured in a separate run{quick}, described here, and merged into this file "
            "with `--merge`: compare its figures with each other, not with other sections'.",
            "",
            *markdown_table(["", ""], [[k, value] for k, value in facts], numeric=False),
            "",
        ]
        if own:
            own_run += [*markdown_table(TARGET_HEADERS, target_rows(own), numeric=False), ""]
        block = render_section(section, own_run)
        titles = [existing_block[0] for existing_block in blocks]
        if block[0] in titles:
            blocks[titles.index(block[0])] = block
        else:
            if blocks and blocks[-1][-1] != "":
                blocks[-1].append("")
            blocks.append(block)
        for target in own:
            if target.measured is None or math.isnan(target.measured):
                continue
            [cells] = target_rows([target], f" (separate run: see section {key})")
            row = "| " + " | ".join(cells) + " |"
            for existing_block in blocks:
                if existing_block[0] != "## Targets":
                    continue
                rows = [i for i, line in enumerate(existing_block) if line.startswith("| ")]
                same = [i for i in rows if existing_block[i].startswith(f"| {target.label} |")]
                if same:
                    existing_block[same[0]] = row
                elif rows:
                    existing_block.insert(rows[-1] + 1, row)
    return "\n".join([*preamble, *itertools.chain.from_iterable(blocks)]).rstrip("\n")


# --------------------------------------------------------------------------- main


def _raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 65536), hard))


def _our_leftovers(before: set[str]) -> list[str]:
    """Names this run added to /dev/shm (ours or a peer's made here) that are still there."""
    mine = ("smabench_", f"sma_{os.getpid()}_")
    return sorted(name for name in set(os.listdir(SHM_DIR)) - before if name.startswith(mine))


SECTIONS = {"a": "share", "b": "handoff", "c": "attach", "d": "memory", "e": "rowsum", "f": "dask"}


def parse_sections(text: str) -> str:
    """Letters of the sections named by ``text``: letters (``ac``) or names (``dask``)."""
    letters = {name: key for key, name in SECTIONS.items()}
    keys = ""
    for token in text.replace(",", " ").split():
        if token in letters:
            keys += letters[token]
        elif set(token) <= set(SECTIONS):
            keys += token
        else:
            raise argparse.ArgumentTypeError(
                f"unknown section {token!r}: letters {''.join(SECTIONS)} or names "
                f"{', '.join(letters)}"
            )
    return keys


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and counts, < 1 min")
    parser.add_argument(
        "--output",
        type=Path,
        help="markdown file to write (default: benchmarks/RESULTS.md, or "
        "benchmarks/RESULTS-quick.md with --quick)",
    )
    parser.add_argument(
        "--sections",
        type=parse_sections,
        default="".join(SECTIONS),
        help="which sections to run, by letter or name: e.g. 'ac', 'dask' or 'd,dask' "
        f"({', '.join(f'{key}={name}' for key, name in SECTIONS.items())}; default: all)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rest of the output file: replace (or add) only this run's sections, "
        "each with this run's facts, and its targets' rows",
    )
    parser.add_argument(
        "--start-method",
        choices=multiprocessing.get_all_start_methods(),
        default=multiprocessing.get_start_method(allow_none=True) or None,
        help="multiprocessing start method (default: this platform's default)",
    )
    parser.add_argument(
        "--without",
        default="",
        help="comma-separated peers to treat as not installed (joblib,sharedarray,torch)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; print every table and write the markdown results."""
    args = parse_args(argv)
    started = time.perf_counter()
    load_at_start = _load()
    command = shlex.join(["python", os.path.relpath(__file__, HERE.parent), *sys.argv[1:]])
    config = QUICK if args.quick else FULL
    output: Path = args.output or HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    ctx = multiprocessing.get_context(args.start_method)
    _raise_open_file_limit()
    before = set(os.listdir(SHM_DIR))
    peers = load_peers({name.strip().lower() for name in args.without.split(",") if name})
    for name in ("joblib", "SharedArray", "torch"):
        print(f"{name}: {peers.version(name)}")
    report = Report()
    steps: list[tuple[str, Callable[[], None]]] = [
        ("a", lambda: bench_share(config, peers, report)),
        ("b", lambda: bench_handoff(config, peers, ctx, report)),
        ("c", lambda: bench_attach(config, ctx, report)),
        ("d", lambda: bench_memory(config, peers, ctx, report)),
        ("e", lambda: bench_rowsum(config, ctx, report)),
        ("f", lambda: bench_dask(config, report)),
    ]
    try:
        for key, step in steps:
            if key in args.sections:
                step()
    finally:
        gc.collect()
        leftovers = _our_leftovers(before)
        for name in leftovers:  # only names this run made; should never happen
            os.unlink(os.path.join(SHM_DIR, name))
        if leftovers:
            print(f"WARNING: removed leftovers from /dev/shm: {leftovers}", file=sys.stderr)
    facts = machine_facts(peers, ctx, command, started, load_at_start)
    targets = build_targets(report.figures, config)
    print("\n## Targets\n")
    for target in targets:
        print(
            f"- {target.label}: {fmt_ratio(target.measured)} (limit {target.limit:g}) "
            f"-> {target.verdict()}"
        )
    if args.merge and output.exists():
        text = merge_markdown(output.read_text(), report, facts, targets, config)
    else:
        text = render_markdown(report, facts, targets, config)
    output.write_text(text + "\n")
    print(f"\nwrote {output}")
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
