"""clean across PID namespaces: a container sharing /dev/shm sees none of the host's processes.

These tests start processes in new PID namespaces with ``unshare --pid --fork
--mount-proc`` (util-linux), which shares ``/dev/shm`` with this process but gives
the processes inside their own ``/proc``: exactly what ``docker run --ipc=host`` or
the containers of a pod see.  They are skipped where that is not allowed.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import pytest

from shared_memory_array import SharedMemoryArray, clean_segments, list_segments
from shared_memory_array.__main__ import main
from shared_memory_array._namespace import pid_namespace

# --kill-child: if unshare dies (a test timing out kills it), the namespace dies too.
UNSHARE = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]

# Run in a new namespace: a child (pid 2 there, so no pid of another namespace's
# /proc names it) makes a segment and keeps it mapped until stdin closes.
KEEP_ONE = """
    import os, sys
    child = os.fork()
    if child == 0:
        from shared_memory_array import SharedMemoryArray
        with SharedMemoryArray.allocate(None, 3) as shared:
            print(shared.name, flush=True)
            sys.stdin.read()
        os._exit(0)
    os.waitpid(child, 0)
"""

# Run in a new namespace: list what it sees of segment argv[1], and what clean would unlink.
JUDGE = """
    import json, sys
    from shared_memory_array import clean_segments, list_segments
    (info,) = [info for info in list_segments() if info.name == sys.argv[1]]
    would = [info.name for info in clean_segments(dry_run=True)]
    print(json.dumps({"info": info.as_dict(), "would_unlink": sys.argv[1] in would}))
"""

# Run in a new namespace: leave a segment as a creator SIGKILLed with its resource
# tracker does; once told to on stdin, judge and clean it from inside.
ABANDON_ONE = """
    import json, os, signal, subprocess, sys
    creator = subprocess.Popen([sys.executable, "-c", '''
    import time
    from multiprocessing import resource_tracker
    from shared_memory_array import SharedMemoryArray
    keep = SharedMemoryArray.allocate(None, 3)
    print(keep.name, resource_tracker._resource_tracker._pid, flush=True)
    time.sleep(600)
    '''], stdout=subprocess.PIPE, text=True)
    name, tracker = creator.stdout.readline().split()
    os.kill(int(tracker), signal.SIGKILL)
    creator.kill()
    creator.wait()
    print(name, flush=True)
    sys.stdin.readline()

    from shared_memory_array import clean_segments, list_segments
    (info,) = [info for info in list_segments() if info.name == name]
    removed = [info.name for info in clean_segments()]
    print(json.dumps({"abandoned": info.abandoned, "removed": name in removed}), flush=True)
"""


@functools.cache
def _unshare_refusal() -> str | None:
    if not sys.platform.startswith("linux"):
        return "PID namespaces are Linux's"
    if shutil.which("unshare") is None:
        return "no unshare command (util-linux)"
    tried = subprocess.run(
        [*UNSHARE, "true"], capture_output=True, text=True, timeout=60, check=False
    )
    if tried.returncode != 0:
        return f"unshare is not allowed here: {tried.stderr.strip()}"
    return None


@pytest.fixture(autouse=True)
def _need_unshare() -> None:
    refusal = _unshare_refusal()
    if refusal is not None:
        pytest.skip(refusal)


def in_namespace(code: str, *args: str) -> subprocess.Popen[str]:
    """Start ``code`` in a new PID namespace (as its pid 1)."""
    return subprocess.Popen(
        [*UNSHARE, sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    """Close its stdin, wait for it, and return what it printed; kill it if it hangs."""
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()  # --kill-child takes the namespace with it
        process.communicate()
        raise
    assert process.returncode == 0, err
    return out


def judged_from_a_new_namespace(name: str) -> dict[str, object]:
    judge = in_namespace(JUDGE, name)
    result: dict[str, object] = json.loads(finish(judge))
    return result


def test_clean_in_a_new_pid_namespace_keeps_the_segments_of_the_one_outside():
    with SharedMemoryArray.allocate(None, 3) as live:
        judged = judged_from_a_new_namespace(live.name)
        info = judged["info"]
        assert isinstance(info, dict)
        # Inside, this process is invisible: by pids alone the segment looks abandoned.
        assert not info["creator_alive"] and not info["mapped_by"]
        assert info["pid_namespace"] == pid_namespace()
        assert info["abandoned"] is False and judged["would_unlink"] is False
        assert os.path.exists(f"/dev/shm/{live.name}")


def test_a_live_segment_made_in_another_pid_namespace_is_never_cleaned(capsys):
    maker = in_namespace(KEEP_ONE)
    try:
        assert maker.stdout is not None
        name = maker.stdout.readline().strip()
        assert name, maker.stderr.read() if maker.stderr else ""

        (info,) = [info for info in list_segments() if info.name == name]
        assert info.pid_namespace not in (0, pid_namespace())
        assert not info.same_pid_namespace and not info.abandoned
        assert name not in [info.name for info in clean_segments()]
        assert main(["info", name]) == 0
        assert "2 (other PID namespace)" in capsys.readouterr().out

        # A sibling namespace, like another container of a pod, sees no process using it.
        judged = judged_from_a_new_namespace(name)
        info_there = judged["info"]
        assert isinstance(info_there, dict)
        assert not info_there["creator_alive"] and not info_there["mapped_by"]
        assert info_there["abandoned"] is False and judged["would_unlink"] is False
        assert os.path.exists(f"/dev/shm/{name}")
    finally:
        finish(maker)  # closing stdin lets the maker unlink its segment
    assert not os.path.exists(f"/dev/shm/{name}")


def test_a_segment_abandoned_in_another_pid_namespace_is_cleaned_only_there():
    namespace = in_namespace(ABANDON_ONE)
    name = ""
    try:
        assert namespace.stdout is not None and namespace.stdin is not None
        name = namespace.stdout.readline().strip()
        assert name, namespace.stderr.read() if namespace.stderr else ""

        (info,) = [info for info in list_segments() if info.name == name]
        assert not info.same_pid_namespace and not info.abandoned
        assert name not in [info.name for info in clean_segments()]

        namespace.stdin.write("clean\n")
        namespace.stdin.flush()
        inside = json.loads(namespace.stdout.readline())
        assert inside == {"abandoned": True, "removed": True}
        assert not os.path.exists(f"/dev/shm/{name}")
    finally:
        finish(namespace)
        if name and os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")


def test_segments_of_the_previous_format_are_judged_as_before():
    # Format 1 records no namespace; what the previous release left is still cleaned.
    with SharedMemoryArray.allocate(None, 3) as live:
        path = f"/dev/shm/{live.name}"
        with open(path, "r+b") as segment:
            head = segment.read(60)
            creator, keeper = struct.unpack_from("<II", head, 36)
            shape = head[52:60]
            # Rewrite as format 1: no namespace field, the shape at 44, and the dtype after it.
            fixed = bytearray(head[:44])
            fixed[8:10] = struct.pack("<H", 1)
            segment.seek(0)
            segment.write(bytes(fixed) + shape + b"<f8")
        judged = judged_from_a_new_namespace(live.name)
        info = judged["info"]
        assert isinstance(info, dict)
        assert info["pid_namespace"] == 0 and info["creator_pid"] == creator == keeper
        assert info["abandoned"] is True and judged["would_unlink"] is True
