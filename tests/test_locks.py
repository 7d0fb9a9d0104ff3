"""Locks on arrays and regions: across processes and threads, released when a holder dies."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from shared_memory_array import LockTimeoutError, SharedMemoryArray

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux OFD locks")


def try_lock(handle: SharedMemoryArray, shared: bool = False, rows=None) -> bool:
    """In a child: can the lock be taken right now?"""
    try:
        with handle.lock(shared=shared, blocking=False, rows=rows):
            return True
    except LockTimeoutError:
        return False


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
            array, torn, seen = shared.as_array(), 0, set()
            for _ in range(10_000):
                with shared.lock(shared=True):
                    snapshot = array.copy()
                torn += snapshot.min() != snapshot.max()
                seen.add(snapshot[0])
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
            time.sleep(0.2)  # the waiter is now blocked in the kernel
            killed_at = time.monotonic()
            os.kill(holder.pid, signal.SIGKILL)
            waiter.join(30)
            holder.wait(60)
    assert acquired_at and acquired_at[0] - killed_at < 0.1


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
