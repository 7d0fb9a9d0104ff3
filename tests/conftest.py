"""Fixtures: every test must leave /dev/shm and the process's file descriptors as it found them."""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import multiprocessing
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing import forkserver, resource_tracker
from typing import TextIO

import pytest

from helpers import memfd_handovers_settled
from shared_memory_array import segment_info

SHM = "/dev/shm"
# Segments the library generates (sma_<pid>_...), their drafts while being made
# (.sma_draft_<pid namespace>_<pid>_...) and raw ones tests make (test_<pid>_...);
# also the copies Dask workers make for hosts added after publish() (sma_late_...).
_TEST_MADE = re.compile(r"(?:sma|test|\.sma_draft_\d+)_(\d+)_")


# A hang must fail the run, with every thread's stack, rather than stall CI until its
# limit: pytest-timeout (120 s) cannot stop a test whose main thread is stuck in C
# code, and nothing watches the interpreter's exit (atexit, joining threads and
# non-daemon children).  faulthandler's watchdog is a C thread: it dumps and exits
# whatever the main thread is doing.  (CI's 3.13 suite once ran past its 90 minutes
# and printed nothing: see _dask_worker_processes_released.)
_TEST_HANG_SECONDS = 300
_EXIT_HANG_SECONDS = 120
_stderr: TextIO | None = None  # the terminal's: fd 2 is captured while tests run


def pytest_configure(config: pytest.Config) -> None:
    global _stderr
    _stderr = os.fdopen(os.dup(2), "w")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    faulthandler.dump_traceback_later(_TEST_HANG_SECONDS, exit=True, file=_stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    faulthandler.dump_traceback_later(_EXIT_HANG_SECONDS, exit=True, file=_stderr)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours(name: str) -> bool:
    """Whether a segment was made by this test run: by this process, or by a child of it.

    Other programs on the machine may use /dev/shm at the same time.  A segment counts
    as ours if its creator is this process, or a process that no longer exists (every
    child a test starts has been reaped by the time the test ends).
    """
    match = _TEST_MADE.match(name)
    if match is not None:
        pid = int(match.group(1))
    elif name.startswith("sma_late_"):  # named after its host, not its maker (Dask)
        try:
            pid = segment_info(name).creator_pid
        except (OSError, ValueError):  # gone meanwhile, or not one of ours after all
            return False
    else:
        return False
    return pid == os.getpid() or not _alive(pid)


def _segments() -> set[str]:
    return set(os.listdir(SHM)) if os.path.isdir(SHM) else set()


def _fds() -> dict[int, str]:
    fds = {}
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd listdir itself used is gone
            fds[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
    return fds


@pytest.fixture(scope="session", autouse=True)
def _start_helpers() -> None:
    """Start the processes that keep an fd open for life before any test counts fds."""
    if sys.platform.startswith("linux"):
        resource_tracker.ensure_running()
        forkserver.ensure_running()
        with contextlib.suppress(ImportError):  # joblib's loky backend has its own
            from joblib.externals.loky.backend import resource_tracker as loky_tracker

            loky_tracker.ensure_running()
    # What the test modules imported (Dask, Ray) lives as long as the run: frozen, the
    # collection each test's leak check runs skips it (0.1 s a test otherwise).
    gc.collect()
    gc.freeze()


def _dask_worker_processes_released(threads_before: set[threading.Thread]) -> None:
    """Wait until Dask has let go of the worker processes' pipes that this test made.

    ``LocalCluster`` returns from closing before a nanny's worker process is fully
    released: two threads per ``distributed.process.AsyncProcess`` (one joining the
    process, one serving its message queue) hold the ``multiprocessing.Process``, and
    so its pipes, until they end, shortly after.  On a loaded machine the leak check
    used to run first and see four pipes (two workers).  Only the test's own threads,
    and 60 s in all: a worker an earlier test left hanging made every later test
    wait a minute per thread, which stalled a CI run for good.
    """
    deadline = time.monotonic() + 60
    for thread in set(threading.enumerate()) - threads_before:
        if thread.name.startswith("AsyncProcess "):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    if not sys.platform.startswith("linux"):
        yield
        return
    segments_before = _segments()
    fds_before = _fds()
    threads_before = set(threading.enumerate())
    yield
    _dask_worker_processes_released(threads_before)
    memfd_handovers_settled(timeout=60)
    # A killed process's segments are removed by another process, asynchronously.
    deadline = time.monotonic() + 5
    while True:
        leaked = sorted(name for name in _segments() - segments_before if _ours(name))
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    gc.collect()  # pools and queues close their pipes when collected
    fds_after = _fds()
    new_fds = {fd: target for fd, target in fds_after.items() if fd not in fds_before}
    for name in leaked:
        os.unlink(os.path.join(SHM, name))
    assert not leaked, f"test left shared memory segments behind: {leaked}"
    assert not new_fds, f"test left file descriptors open: {new_fds}"


START_METHODS = [
    method
    for method in ("fork", "spawn", "forkserver")
    if method in multiprocessing.get_all_start_methods()
]


@pytest.fixture(params=START_METHODS)
def context(request: pytest.FixtureRequest) -> multiprocessing.context.BaseContext:
    """A multiprocessing context for each start method this platform has."""
    return multiprocessing.get_context(request.param)
