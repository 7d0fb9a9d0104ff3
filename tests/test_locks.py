"""Locks on arrays and regions: across processes and threads, released when a holder dies."""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from helpers import try_lock
from shared_memory_array import LockTimeoutError, SegmentNotFoundError, SharedMemoryArray

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux OFD locks")

SHM = "/dev/shm"
# Python 3.12+ warns when a process with threads forks; the tests that do it on purpose.
FORK_WITH_THREADS = "ignore:This process .* is multi-threaded:DeprecationWarning"


def segment_fds(name: str) -> list[int]:
    """This process's descriptors of segment ``name``."""
    found = []
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd listdir itself used is gone
            if os.readlink(f"/proc/self/fd/{entry}") == f"{SHM}/{name}":
                found.append(int(entry))
    return found


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.001)


def start_waiter(
    handle: SharedMemoryArray, timeout: float | None
) -> tuple[threading.Thread, list[object]]:
    """Start a thread that takes the lock then lets it go; return once it is acquiring.

    The thread counts as acquiring once its descriptor of the segment is open.
    """
    before = len(segment_fds(handle.name))
    outcome: list[object] = []

    def take_and_release() -> None:
        try:
            with handle.lock(timeout=timeout):
                outcome.append("locked")
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=take_and_release)
    thread.start()
    wait_until(lambda: len(segment_fds(handle.name)) > before or not thread.is_alive())
    return thread, outcome


@contextlib.contextmanager
def forked_child(report: Callable[[], bytes]) -> Iterator[bytes]:
    """Fork a child (no exec) that sends ``report()``; it stays alive until the block ends."""
    report_r, report_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(hold_w)
            os.write(report_w, report())
            os.read(hold_r, 1)  # returns at EOF: when the parent closes its end
        finally:
            os._exit(0)
    os.close(report_w)
    os.close(hold_r)
    try:
        yield os.read(report_r, 1024)
    finally:
        os.close(hold_w)
        os.close(report_r)
        os.waitpid(pid, 0)


def writer(handle: SharedMemoryArray, rounds: int) -> None:
    array = handle.as_array()
    for value in range(rounds):
        with handle.lock():
            array[:] = value


def test_lock_gives_zero_torn_reads_against_a_writer():
    context = __import__("multiprocessing").get_context("fork")
    with SharedMemoryArray.allocate(None, 20_000) as shared:
        child = context.Process(target=writer, args=(shared, 10**9))
        child.start()
        try:
            array, torn, seen, reads = shared.as_array(), 0, set(), 0
            # Read until the writer has been seen at work a hundred times: on a
            # loaded machine the two take turns, and 10,000 reads saw 48 values.
            # A writer that never writes fails the test after a minute, never hangs it.
            deadline = time.monotonic() + 60
            while (reads < 10_000 or len(seen) <= 100) and time.monotonic() < deadline:
                with shared.lock(shared=True):
                    snapshot = array.copy()
                torn += snapshot.min() != snapshot.max()
                seen.add(snapshot[0])
                reads += 1
        finally:
            child.kill()
            child.join(60)
    assert torn == 0
    assert len(seen) > 100  # the writer really was writing meanwhile


def test_a_killed_holder_releases_its_lock_at_once():
    with SharedMemoryArray.allocate(None, 10) as shared:
        code = textwrap.dedent(
            """
            import pickle, sys, time
            handle = pickle.loads(bytes.fromhex(sys.argv[1]))
            lock = handle.lock()
            lock.acquire()
            print("held", flush=True)
            time.sleep(600)
            """
        )
        with subprocess.Popen(
            [sys.executable, "-c", code, pickle.dumps(shared).hex()],
            stdout=subprocess.PIPE,
            text=True,
        ) as holder:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            assert not try_lock(shared)
            acquired_at: list[float] = []

            def wait_for_lock() -> None:
                with shared.lock(timeout=30):
                    acquired_at.append(time.monotonic())

            waiter = threading.Thread(target=wait_for_lock)
            waiter.start()
            wait_until(lambda: len(segment_fds(shared.name)) == 1)  # the waiter is waiting
            killed_at = time.monotonic()
            os.kill(holder.pid, signal.SIGKILL)
            waiter.join(30)
            holder.wait(60)
    # Released at the kill, not at the waiter's 30 s timeout (bound generous for loaded CIs).
    assert acquired_at and acquired_at[0] - killed_at < 10


def test_disjoint_regions_lock_independently(context):
    shared = SharedMemoryArray.allocate(None, (100, 10))
    with shared, shared[0:50].lock(), ProcessPoolExecutor(1, mp_context=context) as pool:
        assert pool.submit(try_lock, shared[50:100]).result(timeout=60)
        assert pool.submit(try_lock, shared, False, slice(60, 70)).result(timeout=60)
        assert not pool.submit(try_lock, shared[40:60]).result(timeout=60)
        assert not pool.submit(try_lock, shared).result(timeout=60)


def test_shared_locks_let_readers_in_together_and_keep_writers_out(context):
    with SharedMemoryArray.allocate(None, 10) as shared:
        with shared.lock(shared=True), ProcessPoolExecutor(1, mp_context=context) as pool:
            assert pool.submit(try_lock, shared, True).result(timeout=60)
            assert not pool.submit(try_lock, shared, False).result(timeout=60)
        with shared.lock(), ProcessPoolExecutor(1, mp_context=context) as pool:
            assert not pool.submit(try_lock, shared, True).result(timeout=60)


def test_threads_of_one_process_exclude_each_other():
    with SharedMemoryArray.allocate(None, 10) as shared:
        with shared.lock():
            outcome: list[bool] = []
            thread = threading.Thread(target=lambda: outcome.append(try_lock(shared)))
            thread.start()
            thread.join(30)
        assert outcome == [False]
        assert try_lock(shared)


def test_timeout_and_non_blocking_raise_a_timeout_error():
    with SharedMemoryArray.allocate(None, 10) as shared:
        held = shared.lock().acquire()
        started = time.monotonic()
        with pytest.raises(LockTimeoutError, match=shared.name) as info:
            shared.lock(timeout=0.2).acquire()
        assert time.monotonic() - started >= 0.2
        assert isinstance(info.value, TimeoutError) and info.value.timeout == 0.2
        with pytest.raises(TimeoutError):
            shared.lock(blocking=False).acquire()
        held.release()
        with shared.lock(blocking=False) as lock:
            assert lock.locked
        assert not lock.locked


def test_a_lock_is_not_reentrant_and_keeps_no_descriptor_when_free():
    with SharedMemoryArray.allocate(None, 10) as shared:
        before = len(os.listdir("/proc/self/fd"))
        lock = shared.lock()
        assert len(os.listdir("/proc/self/fd")) == before
        with lock, pytest.raises(RuntimeError, match="already held"):
            lock.acquire()
        assert len(os.listdir("/proc/self/fd")) == before
        assert "free" in repr(lock)


def test_an_empty_region_locks_nothing_and_a_strided_one_its_span():
    with SharedMemoryArray.allocate(None, (10, 10)) as shared:
        with shared[5:5].lock() as empty:
            assert empty.locked and try_lock(shared) and try_lock(shared[5:5])
        with shared[2:4, ::3].lock(shared=True):
            assert not try_lock(shared[3])
            assert try_lock(shared[4:])
        assert np.asarray(shared).sum() == 0


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def test_a_lock_released_in_the_parent_is_free_though_a_forked_child_lives_on():
    context = __import__("multiprocessing").get_context("fork")
    with SharedMemoryArray.allocate(None, 10) as shared:
        lock = shared.lock().acquire()
        child = context.Process(target=_sleep, args=(30,))
        child.start()
        try:
            lock.release()
            # The child closes its inherited descriptor as soon as it runs (at fork);
            # after that nothing holds the lock, though the child lives on.
            with shared.lock(timeout=10):
                pass
        finally:
            child.kill()
            child.join(60)


def _bind_socket(path: str) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)  # the socket file stays after the socket is closed


_PLANT = {
    "a FIFO": os.mkfifo,
    "a symbolic link": lambda path: os.symlink(__file__, path),  # to a regular file
    "a directory": os.mkdir,
    "a socket": _bind_socket,
}


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "exclusive"])
@pytest.mark.parametrize("kind", list(_PLANT))
def test_a_name_leading_to_something_else_than_a_segment_is_refused_at_once(kind, shared):
    with SharedMemoryArray.allocate(None, 4) as handle:
        lock = handle.lock(shared=shared, timeout=1)
        path = os.path.join(SHM, handle.name)
        os.unlink(path)
        _PLANT[kind](path)
        try:
            message = f"{handle.name}.* is {kind}, not a shared memory segment"
            with pytest.raises(SegmentNotFoundError, match=message) as info:
                lock.acquire()
        finally:
            (os.rmdir if kind == "a directory" else os.unlink)(path)
        assert info.value.segment == handle.name
        assert not lock.locked


@pytest.mark.parametrize("timeout", [math.nan, -0.5, -2, -math.inf])
def test_a_nan_or_negative_timeout_is_refused_when_the_lock_is_made(timeout):
    with SharedMemoryArray.allocate(None, 4) as handle:
        message = f"{handle.name}.*got {timeout!r}"
        with pytest.raises(ValueError, match=message):
            handle.lock(timeout=timeout)


@pytest.mark.parametrize("timeout", [-1, math.inf])
def test_a_timeout_of_minus_one_or_infinity_waits_as_long_as_it_takes(timeout):
    with SharedMemoryArray.allocate(None, 4) as handle:
        with handle.lock():
            waiter, outcome = start_waiter(handle, timeout)
            waiter.join(0.5)  # ample time to give up, were it going to
            assert waiter.is_alive() and outcome == []
        waiter.join(60)
        assert outcome == ["locked"]


def test_release_frees_the_lock_though_a_copy_of_its_descriptor_is_still_open():
    with SharedMemoryArray.allocate(None, 10) as handle:
        lock = handle.lock().acquire()
        (fd,) = segment_fds(handle.name)
        copy = os.dup(fd)  # as a forked child's, say
        try:
            lock.release()
            assert try_lock(handle)
        finally:
            os.close(copy)


@pytest.mark.filterwarnings(FORK_WITH_THREADS)
def test_a_forked_child_keeps_no_descriptor_of_a_lock_still_being_acquired():
    with SharedMemoryArray.allocate(None, 10) as handle:
        with handle.lock():
            waiter, outcome = start_waiter(handle, None)
            with forked_child(lambda: str(len(segment_fds(handle.name))).encode()) as report:
                assert report == b"0"
        waiter.join(60)
        assert outcome == ["locked"]


@pytest.mark.filterwarnings(FORK_WITH_THREADS)
@pytest.mark.parametrize("timeout", [None, 60.0], ids=["waiting-in-the-kernel", "polling"])
def test_a_lock_waited_for_across_a_fork_is_free_once_released_though_the_child_lives(timeout):
    with SharedMemoryArray.allocate(None, 10) as handle:
        holder = handle.lock().acquire()
        waiter, outcome = start_waiter(handle, timeout)
        with forked_child(lambda: b"alive") as report:
            assert report == b"alive"
            holder.release()
            waiter.join(60)
            assert outcome == ["locked"]
            assert try_lock(handle)
