"""Section a, share cost: how long it takes to put an array into shared memory.

Each ``put_*`` copies a touched private array into fresh shared memory one way and
returns the seconds it took and how to remove what it made (removal is not timed).
The floors copy into memory with no library on top.  Method: README.md, "a. Share cost".
"""

from __future__ import annotations

import gc
import mmap
import os
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from types import ModuleType
from typing import Any

import numpy as np

from shared_memory_array import SharedMemoryArray

from .config import Config
from .harness import (
    MB,
    SHM_DIR,
    Cleanup,
    fresh_name,
    make_data,
    median,
    rotated,
    rows_for,
    unlink_all,
)
from .peers import NOT_INSTALLED, Peers
from .report import DASH, TIMES, Report, Section, fmt_ratio, fmt_time, markdown_table, method_link

Put = Callable[[np.ndarray[Any, Any]], tuple[float, Cleanup]]

MEMCPY = "floor: memcpy into touched memory (np.copyto)"
OURS = "**ours**: SharedMemoryArray.copy"
STDLIB = "stdlib: SharedMemory(create=True) + copy"


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


def put_joblib(src: np.ndarray[Any, Any], joblib: ModuleType) -> tuple[float, Cleanup]:
    """joblib: ``joblib.dump`` into a file in /dev/shm (what its memmapping backend does)."""
    path = os.path.join(SHM_DIR, fresh_name("joblib") + ".joblib")
    start = time.perf_counter()
    written = joblib.dump(src, path)
    elapsed = time.perf_counter() - start

    return elapsed, lambda: unlink_all(written)


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


def _methods(peers: Peers) -> list[tuple[str, Put | None]]:
    """Every way but the memcpy floor, in table order; ``None`` for a missing peer."""
    joblib, sharedarray, torch = peers.get("joblib"), peers.get("SharedArray"), peers.get("torch")
    return [
        ("floor: fresh private anonymous mmap + copy", put_fresh_anonymous),
        ("floor: fresh /dev/shm file, mmap + copy", put_fresh_shm_mmap),
        ("floor: fresh /dev/shm file, pwrite()", put_fresh_shm_pwrite),
        (OURS, put_ours),
        (STDLIB, put_stdlib),
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


PEERS_FROM = 4  # _methods()[PEERS_FROM:] are the peers ours is compared with


def _time_all(
    config: Config, methods: list[tuple[str, Put | None]]
) -> dict[tuple[str, int], list[float]]:
    """Seconds of each method at each size, keyed by (label, size in MB)."""
    samples: dict[tuple[str, int], list[float]] = {}
    for size_mb, reps in zip(config.share_sizes_mb, config.share_reps):
        src = make_data(rows_for(size_mb))
        touched = np.empty_like(src)
        touched[...] = 0
        for rep in range(reps + 1):  # repetition 0 warms up and is not recorded
            runs: list[tuple[str, float]] = [(MEMCPY, put_memcpy_floor(src, touched))]
            for label, method in rotated(methods, rep):
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
    return samples


def run(config: Config, peers: Peers, ctx: Any, report: Report) -> None:
    """Section a: time to put an array into shared memory, per method and size."""
    methods = _methods(peers)
    samples = _time_all(config, methods)
    largest = config.share_sizes_mb[-1]
    stdlib_median = median(samples[(STDLIB, largest)])
    headers = ["method", *(f"{size} MB" for size in config.share_sizes_mb)]
    headers += [f"GB/s at {largest} MB", f"{TIMES} stdlib at {largest} MB"]
    rows = []
    for label in [MEMCPY] + [label for label, _ in methods]:
        if (label, largest) not in samples:
            rows.append([label, *([NOT_INSTALLED] * len(config.share_sizes_mb)), DASH, DASH])
            continue
        cells = [fmt_time(samples[(label, size)]) for size in config.share_sizes_mb]
        mid = median(samples[(label, largest)])
        rows.append(
            [label, *cells, f"{largest * MB / mid / 1e9:.2f}", fmt_ratio(mid / stdlib_median)]
        )

    ours = median(samples[(OURS, largest)])
    peer_labels = [label for label, _ in methods[PEERS_FROM:] if (label, largest) in samples]
    fastest_peer = min(median(samples[(label, largest)]) for label in peer_labels)
    report.figures["copy_vs_stdlib"] = ours / stdlib_median
    report.figures["copy_vs_fastest_peer"] = ours / fastest_peer
    report.figures["copy_size_mb"] = largest
    section = Section(
        "a. Share cost",
        [
            "Time to put a float64 array into shared memory; "
            f"{', '.join(map(str, config.share_reps))} repetitions per size after an "
            f"untimed warm-up, medians with the min{DASH}max range. " + method_link("a-share-cost")
        ],
    )
    section.tables.append(markdown_table(headers, rows))
    section.notes.append(
        f"ours / fastest installed peer at {largest} MB: "
        f"{fmt_ratio(report.figures['copy_vs_fastest_peer'])}."
    )
    torch = peers.get("torch")
    if torch is not None:
        section.notes.append(
            f"torch copies with its own thread pool ({torch.get_num_threads()} threads); "
            "the others copy on one thread."
        )
    report.add(section)
