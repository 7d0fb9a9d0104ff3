"""Per-host copies: held by the processes that joined them, unlinked by the last to leave."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from shared_memory_array import (
    SharedMemoryArray,
    _hostcopy,
    _names,
    clean_segments,
    list_segments,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-host copies are tested on Linux"
)


def exists(name: str) -> bool:
    return os.path.exists(os.path.join("/dev/shm", name))


def create_elsewhere(data: np.ndarray) -> tuple[str, tuple[int, int, int]]:
    """Make a copy in a process that exits at once: its creator is dead."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_hostcopy.create, (data, False, _names.generate()))


def hold_until_told(name: str, identity: tuple[int, int, int], ready, go, result) -> None:
    _hostcopy.enrol(1)
    assert _hostcopy.join(name, identity)
    ready.set()
    go.wait(60)
    result.put(_hostcopy.leave(name))


@pytest.fixture
def copy():
    name, identity = create_elsewhere(np.arange(1000.0))
    yield name, identity
    _hostcopy.release(name, identity)


def test_only_the_last_member_to_leave_unlinks(copy):
    name, identity = copy
    ctx = multiprocessing.get_context("spawn")
    ready, go, result = ctx.Event(), ctx.Event(), ctx.Queue()
    other = ctx.Process(target=hold_until_told, args=(name, identity, ready, go, result))
    other.start()
    try:
        assert ready.wait(60)
        assert _hostcopy.join(name, identity)
        assert _hostcopy.leave(name) is False  # the other process still holds it
        assert exists(name)
        go.set()
        assert result.get(timeout=60) is True
        assert not exists(name)
    finally:
        go.set()
        other.join(60)
        result.close()
        result.join_thread()


def test_a_killed_member_never_keeps_the_copy_nor_takes_it_along(copy):
    name, identity = copy
    ctx = multiprocessing.get_context("spawn")
    ready, go, result = ctx.Event(), ctx.Event(), ctx.Queue()
    other = ctx.Process(target=hold_until_told, args=(name, identity, ready, go, result))
    other.start()
    assert ready.wait(60)
    assert _hostcopy.join(name, identity)
    os.kill(other.pid, signal.SIGKILL)
    other.join(60)
    result.close()
    result.join_thread()
    assert exists(name)  # the kill unlinked nothing
    assert _hostcopy.leave(name) is True  # and left no lock behind


def test_clean_spares_a_held_copy_of_a_dead_creator_and_removes_it_once_let_go(copy):
    name, identity = copy
    assert _hostcopy.join(name, identity)
    [info] = [info for info in list_segments() if info.name == name]
    assert os.getpid() in info.mapped_by
    assert not info.abandoned
    assert name not in [info.name for info in clean_segments()]
    assert _hostcopy.leave(name) is True  # no other holder: leaving unlinks
    assert not exists(name)


def test_clean_removes_a_copy_whose_holders_all_died(copy):
    name, _ = copy
    assert name in [info.name for info in clean_segments()]
    assert not exists(name)


def test_release_unlinks_a_copy_still_held(copy):
    name, identity = copy
    assert _hostcopy.join(name, identity)
    assert _hostcopy.release(name, identity) is True
    assert not exists(name)
    assert _hostcopy.held() == []
    assert _hostcopy.join(name, identity) is False


FORK_THEN_PROBE = """
import fcntl, os, sys
from shared_memory_array import _hostcopy
name, inode = sys.argv[1], int(sys.argv[2])
_hostcopy.enrol(1)
assert _hostcopy.join(name, (os.stat("/dev/shm/" + name).st_dev, inode, 0))
pid = os.fork()
if pid == 0:
    os._exit(0 if _hostcopy.held() == [] and not _hostcopy.is_member() else 1)
_, status = os.waitpid(pid, 0)
assert os.WEXITSTATUS(status) == 0, "the child saw or let go of the parent's copies"
probe = os.open("/dev/shm/" + name, os.O_RDONLY)
try:
    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    sys.exit("the parent's shared lock is gone")
except BlockingIOError:
    pass
os.close(probe)
assert _hostcopy.leave(name) is True
"""


def test_a_forked_child_never_lets_go_of_the_parents_hold(copy):
    name, identity = copy
    result = subprocess.run(
        [sys.executable, "-c", FORK_THEN_PROBE, name, str(identity[1])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not exists(name)


def test_a_process_lets_go_only_when_its_last_worker_withdraws(copy):
    name, identity = copy
    _hostcopy.enrol(1)
    _hostcopy.enrol(2)
    try:
        assert _hostcopy.join(name, identity)
        assert _hostcopy.withdraw(1) == []  # a threaded worker of the same process remains
        assert exists(name)
    finally:
        assert _hostcopy.withdraw(2) == [name]
    assert not exists(name)
    assert not _hostcopy.is_member()


def test_clean_spares_a_copy_held_by_a_process_it_cannot_see(copy, monkeypatch):
    name, identity = copy
    assert _hostcopy.join(name, identity)
    # as from another PID namespace: /proc shows nobody using it
    monkeypatch.setattr("shared_memory_array._segment.holders", dict)
    assert [info.name for info in clean_segments(dry_run=True)].count(name) == 1
    assert name not in [info.name for info in clean_segments()]
    assert exists(name)
    assert _hostcopy.leave(name) is True


def test_create_once_gives_every_process_of_a_host_the_first_copy_made():
    name = _names.generate()
    first = np.arange(1000.0)
    _hostcopy.enrol(1)
    try:
        made = _hostcopy.create_once(first, False, name)
        assert made is not None
        # A second worker, a moment late, finds the first one's copy under the name.
        assert _hostcopy.create_once(first * 2, False, name) == made
        with SharedMemoryArray.attach(name) as copy:
            np.testing.assert_array_equal(copy.as_array(), first)
        mine = [info.name for info in list_segments() if info.creator_pid == os.getpid()]
        assert mine == [name]  # the drafts' names are gone
        assert _hostcopy.held() == [name]
    finally:
        _hostcopy.withdraw(1)
    assert not exists(name)


def test_claim_lets_one_holder_in_at_a_time_and_leaves_no_lock_file():
    name = _names.generate()
    order = []

    def second() -> None:
        with _hostcopy.claim(name):
            order.append("second")

    with _hostcopy.claim(name):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.2)  # the waiter opened the lock file and waits for it
        order.append("first")
    waiter.join(10)
    assert order == ["first", "second"]
    assert not os.path.exists(os.path.join("/dev/shm", f".{name}.lock"))
