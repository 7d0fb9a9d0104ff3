"""The command line and its Python functions: list, info and clean this library's segments."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
from multiprocessing import shared_memory

import numpy as np
import pytest

import helpers
from shared_memory_array import (
    LayoutError,
    SegmentNotFoundError,
    SharedMemoryArray,
    SharedMemoryManager,
    clean_segments,
    list_segments,
    release_cached_mappings,
    segment_info,
)
from shared_memory_array.__main__ import main
from shared_memory_array._namespace import pid_namespace


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared_memory_array", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def leave_behind() -> str:
    """Make a segment in a process that is then SIGKILLed with its resource tracker."""
    code = textwrap.dedent(
        """
        import time
        from multiprocessing import resource_tracker
        from shared_memory_array import SharedMemoryArray
        keep = SharedMemoryArray.allocate(None, (10, 10), "int32")
        print(keep.name, resource_tracker._resource_tracker._pid, flush=True)
        time.sleep(600)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    ) as creator:
        assert creator.stdout is not None
        name, tracker = creator.stdout.readline().split()
        os.kill(int(tracker), signal.SIGKILL)  # no one left to clean up
        creator.kill()
        creator.wait(60)
    return name


def test_list_and_info_describe_a_live_segment():
    with SharedMemoryArray.copy(None, np.ones((20, 30), dtype="f4")) as shared:
        (info,) = [info for info in list_segments() if info.name == shared.name]
        assert (info.shape, info.dtype, info.nbytes) == ((20, 30), "float32", 2400)
        assert info.committed >= info.size >= 2400
        assert (info.creator_pid, info.creator_alive) == (os.getpid(), True)
        assert info.keeper_pid == os.getpid() and info.keeper_alive
        assert info.mapped_by == [os.getpid()]
        assert not info.abandoned
        assert segment_info(shared.name) == info

        listed = cli("list")
        assert listed.returncode == 0 and shared.name in listed.stdout
        assert "(20, 30)" in listed.stdout
        (entry,) = [e for e in json.loads(cli("list", "--json").stdout) if e["name"] == shared.name]
        assert entry["shape"] == [20, 30] and entry["abandoned"] is False
        details = json.loads(cli("info", shared.name, "--json").stdout)
        assert details["mapped_by"] == [os.getpid()]


def test_manager_segments_name_the_manager_as_keeper():
    with SharedMemoryManager() as manager:
        shared = SharedMemoryArray.allocate(manager, 4)
        info = segment_info(shared.name)
        assert info.keeper_pid == manager._process.pid and info.keeper_alive


def test_info_on_missing_or_foreign_segments_is_a_clear_error():
    with pytest.raises(SegmentNotFoundError):
        segment_info("sma_0_missing")
    result = cli("info", "sma_0_missing")
    assert result.returncode == 1 and "sma_0_missing" in result.stderr
    raw = shared_memory.SharedMemory(helpers.raw_name(), create=True, size=64)
    try:
        with pytest.raises(LayoutError):
            segment_info(raw.name)
        assert raw.name not in [info.name for info in list_segments()]
    finally:
        raw.close()
        raw.unlink()


def test_clean_removes_what_a_sigkilled_creator_left_and_nothing_else():
    name = leave_behind()
    assert os.path.exists(f"/dev/shm/{name}")
    raw = shared_memory.SharedMemory(helpers.raw_name(), create=True, size=64)
    with SharedMemoryArray.allocate(None, 3) as live:
        dry = cli("clean", "--dry-run")
        assert dry.returncode == 0 and name in dry.stdout
        assert os.path.exists(f"/dev/shm/{name}")
        assert json.loads(cli("clean", "--dry-run", "--json").stdout)[0]["name"] == name

        (abandoned,) = [info for info in list_segments() if info.name == name]
        assert abandoned.abandoned and not abandoned.creator_alive

        removed = main(["clean"])
        assert removed == 0
        assert not os.path.exists(f"/dev/shm/{name}")
        assert os.path.exists(f"/dev/shm/{live.name}")
        assert os.path.exists(f"/dev/shm/{raw.name}")
    raw.close()
    raw.unlink()


def test_clean_keeps_an_abandoned_segment_someone_still_maps():
    name = leave_behind()
    client = SharedMemoryArray.attach(name)
    view = client.as_array()
    assert name not in [info.name for info in clean_segments()]
    assert os.path.exists(f"/dev/shm/{name}")
    del view
    client.close()
    release_cached_mappings()
    assert name in [info.name for info in clean_segments()]
    assert not os.path.exists(f"/dev/shm/{name}")


@pytest.mark.skipif(os.getuid() != 0, reason="making another user's segment needs root")
def test_clean_never_touches_another_users_segments():
    name = leave_behind()
    os.chown(f"/dev/shm/{name}", 65534, 65534)
    try:
        assert name not in [info.name for info in clean_segments()]
        assert os.path.exists(f"/dev/shm/{name}")
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "shared-memory-array")
    if not os.path.exists(script):
        pytest.skip("not installed as a package (no console script next to the interpreter)")
    result = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("list", "info", "clean", "demo"))


def test_a_creator_pid_that_now_names_a_thread_is_dead():
    # /proc/<tid> opens for any thread, though it lists processes only; a thread of
    # another process wears the number of a creator that is gone.
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    tid = thread.native_id
    name = f".sma_draft_{pid_namespace()}_{tid}_{secrets.token_hex(8)}"
    path = f"/dev/shm/{name}"
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        (info,) = [info for info in list_segments() if info.name == name]
        assert info.creator_pid == tid != os.getpid()
        assert not info.creator_alive and info.abandoned
    finally:
        os.unlink(path)
        stop.set()
        thread.join()
