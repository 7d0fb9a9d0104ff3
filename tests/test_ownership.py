"""Only the owner unlinks; owners clean up after themselves, even when killed."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from multiprocessing import shared_memory
from multiprocessing.managers import SharedMemoryManager as StdlibManager

import numpy as np
import pytest

import helpers
from shared_memory_array import (
    LayoutError,
    NotOwnerError,
    SharedMemoryArray,
    SharedMemoryManager,
)


def exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name}")


def wait_until(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_closing_a_non_owner_keeps_the_segment():
    with SharedMemoryArray.allocate(None, 3) as owner:
        client = SharedMemoryArray.attach(owner.name)
        assert not client.owner
        client.close()
        assert exists(owner.name)
    assert not exists(owner.name)


def test_unlink_by_a_non_owner_is_refused():
    with SharedMemoryArray.allocate(None, 3) as owner:
        client = SharedMemoryArray.attach(owner.name)
        with pytest.raises(NotOwnerError, match=owner.name):
            client.unlink()
        client.close()
        assert exists(owner.name)


def test_unlink_by_the_owner_keeps_its_mapping():
    owner = SharedMemoryArray.copy(None, np.arange(3))
    owner.unlink()
    assert not exists(owner.name)
    assert not owner.owner
    assert owner.as_array().tolist() == [0, 1, 2]
    owner.close()


@pytest.mark.parametrize(
    ("shape", "dtype", "order"),
    [((3, 4), "f4", None), ((4, 3), None, None), (None, None, "F"), ((3, 4, 1), "f8", None)],
)
def test_failed_attach_never_unlinks(shape, dtype, order):
    with SharedMemoryArray.allocate(None, (3, 4)) as owner:
        with pytest.raises(LayoutError, match=owner.name):
            SharedMemoryArray.attach(owner.name, shape, dtype, order=order)
        assert exists(owner.name)


def test_failed_attach_of_a_raw_segment_never_unlinks():
    raw = shared_memory.SharedMemory(helpers.raw_name(), create=True, size=64)
    try:
        with pytest.raises(LayoutError, match="too small"):
            SharedMemoryArray.attach(raw.name, (9,), "f8")
        with pytest.raises(LayoutError, match="pass its shape and dtype"):
            SharedMemoryArray.attach(raw.name)
        assert exists(raw.name)
    finally:
        raw.close()
        raw.unlink()


def test_forked_child_copy_of_the_owner_never_unlinks():
    owner = SharedMemoryArray.allocate(None, 3)
    pid = os.fork()
    if pid == 0:  # child: its copy of the handle is not the owner
        code = 0 if not owner.owner else 1
        owner.close()
        del owner
        gc.collect()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert exists(owner.name)
    owner.close()
    assert not exists(owner.name)


def test_garbage_collected_owner_unlinks():
    owner = SharedMemoryArray.allocate(None, 3)
    name = owner.name
    view = owner.as_array()
    del owner
    gc.collect()
    assert not exists(name)
    view[:] = 1  # the view keeps the memory mapped
    assert view.sum() == 3


def test_owner_open_at_interpreter_exit_is_unlinked_quietly():
    result = helpers.run_python(
        """
        from shared_memory_array import SharedMemoryArray
        keep = SharedMemoryArray.allocate(None, (100, 100))
        print(keep.name)
        """
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert not exists(result.stdout.strip())


def _make_owner(queue) -> None:
    keep = SharedMemoryArray.allocate(None, 10)
    queue.put(keep.name)


def test_owner_open_at_child_process_exit_is_unlinked(context):
    queue = context.Queue()
    child = context.Process(target=_make_owner, args=(queue,))
    child.start()
    name = queue.get(timeout=60)
    child.join(60)
    queue.close()
    queue.join_thread()
    assert child.exitcode == 0
    assert not exists(name)


def test_closing_a_manager_owner_releases_it_and_shutdown_cleans_the_rest(capfd):
    with StdlibManager() as manager:
        first, middle, last = (SharedMemoryArray.allocate(manager, 4) for _ in range(3))
        middle.close()
        assert not exists(middle.name)
        assert exists(first.name) and exists(last.name)
    assert not exists(first.name) and not exists(last.name)
    assert capfd.readouterr().err == ""


def test_manager_segments_outlive_their_handles_until_shutdown():
    with SharedMemoryManager() as manager:
        name = SharedMemoryArray.copy(manager, np.arange(3)).name
        gc.collect()
        assert SharedMemoryArray.attach(name).as_array().tolist() == [0, 1, 2]
    assert not exists(name)


def test_close_after_the_manager_shut_down_is_quiet(capfd):
    with StdlibManager() as manager:
        shared = SharedMemoryArray.allocate(manager, 4)
    shared.close()
    assert capfd.readouterr().err == ""


def _allocate_then_wait(manager, queue) -> None:
    queue.put(SharedMemoryArray.allocate(manager, 10).name)
    time.sleep(600)


def test_killed_owner_with_a_manager_is_cleaned_by_the_manager():
    context = multiprocessing.get_context("fork")
    with StdlibManager() as manager:
        queue = context.Queue()
        child = context.Process(target=_allocate_then_wait, args=(manager, queue))
        child.start()
        name = queue.get(timeout=60)
        os.kill(child.pid, signal.SIGKILL)
        child.join(60)
        queue.close()
        queue.join_thread()
        assert exists(name)
    assert not exists(name)


def _killed(code: str, *args: str) -> list[str]:
    """Start ``code`` in a new interpreter, read the lines it prints up to 'ready', SIGKILL it.

    Its stderr goes to a file, not a pipe nobody reads (its resource tracker may
    write there after the kill), and is shown if it exits before it is ready.
    """
    with (
        tempfile.TemporaryFile("w+") as stderr,
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        ) as process,
    ):
        assert process.stdout is not None
        lines, ready = [], False
        for line in process.stdout:
            if line.strip() == "ready":
                ready = True
                break
            lines.append(line.strip())
        process.kill()
        process.wait(60)
        if not ready:
            stderr.seek(0)
            raise AssertionError(
                f"exited (code {process.returncode}) before it was ready, having printed "
                f"{lines}; stderr:\n{stderr.read()}"
            )
    return lines


def test_killed_owner_without_a_manager_is_cleaned_by_its_resource_tracker():
    (name,) = _killed(
        """
        import time
        from shared_memory_array import SharedMemoryArray
        keep = SharedMemoryArray.allocate(None, 10)
        print(keep.name, "ready", sep="\\n", flush=True)
        time.sleep(600)
        """
    )
    assert wait_until(lambda: not exists(name))


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_killed_parent_of_our_manager_takes_its_segments_along(method):
    name, server = _killed(
        """
        import multiprocessing, sys, time
        from shared_memory_array import SharedMemoryArray, SharedMemoryManager
        manager = SharedMemoryManager(ctx=multiprocessing.get_context(sys.argv[1]))
        manager.start()
        keep = SharedMemoryArray.allocate(manager, 10)
        print(keep.name, manager._process.pid, "ready", sep="\\n", flush=True)
        time.sleep(600)
        """,
        method,
    )
    assert wait_until(lambda: not exists(name))

    def server_gone() -> bool:
        try:
            os.kill(int(server), 0)
        except ProcessLookupError:
            return True
        return False

    assert wait_until(server_gone)


def test_an_owner_never_unlinks_a_newer_segment_that_took_its_name():
    owner = SharedMemoryArray.allocate(None, 3)
    name = owner.name
    os.unlink(f"/dev/shm/{name}")  # someone else removes it...
    with SharedMemoryArray.allocate(None, 5, name=name) as newer:  # ...and reuses the name
        owner.close()
        assert exists(name)
        assert SharedMemoryArray.attach(name).shape == (5,)
    assert not exists(newer.name)


def test_a_layout_numpy_refuses_leaves_no_segment():
    before = set(os.listdir("/dev/shm"))
    with pytest.raises(LayoutError):
        SharedMemoryArray.allocate_unsafe(None, (3,), ("f8", (2,)))
    with pytest.raises(LayoutError):
        SharedMemoryArray.allocate(None, (0, 2**63))
    assert set(os.listdir("/dev/shm")) <= before
