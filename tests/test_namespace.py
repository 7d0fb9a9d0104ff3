"""The PID namespace a process lives in, and the draft names that record it."""

from __future__ import annotations

import os
import sys

import pytest

import helpers
from shared_memory_array import _namespace
from shared_memory_array._namespace import Draft, draft_name, is_draft, parse_draft, pid_namespace

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PID namespaces are Linux's"
)


@linux_only
def test_pid_namespace_is_the_inode_of_proc_self_ns_pid():
    assert pid_namespace() == os.stat("/proc/self/ns/pid").st_ino != 0


def test_pid_namespace_is_zero_where_proc_cannot_be_read(monkeypatch):
    def no_proc(path: str) -> os.stat_result:
        raise FileNotFoundError(path)

    pid_namespace.cache_clear()
    try:
        monkeypatch.setattr(_namespace.os, "stat", no_proc)
        assert pid_namespace() == 0
    finally:
        monkeypatch.undo()
        pid_namespace.cache_clear()


@linux_only
def test_a_child_forked_after_unshare_reports_the_new_namespace():
    # unshare(CLONE_NEWPID) moves only the children forked afterwards: the parent
    # has the old namespace cached, and its child must not inherit that answer.
    result = helpers.run_python(
        """
        import ctypes, os
        from shared_memory_array._namespace import pid_namespace

        before = pid_namespace()
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x20000000) != 0:  # CLONE_NEWPID
            print("refused", os.strerror(ctypes.get_errno()))
            raise SystemExit
        child = os.fork()
        if child == 0:
            print(pid_namespace(), os.stat("/proc/self/ns/pid").st_ino, flush=True)
            os._exit(0)
        os.waitpid(child, 0)
        print(before, pid_namespace(), flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    if result.stdout.startswith("refused"):
        pytest.skip(f"unshare(CLONE_NEWPID) is not allowed here: {result.stdout.strip()}")
    child_line, parent_line = result.stdout.splitlines()
    child_cached, child_actual = map(int, child_line.split())
    before, after = map(int, parent_line.split())
    assert child_cached == child_actual != before
    assert after == before  # the parent itself stays where it was


def test_a_draft_name_says_who_is_making_it():
    name = draft_name()
    assert name.startswith(".sma_draft_")
    assert parse_draft(name) == Draft(pid_namespace(), os.getpid())
    assert is_draft(name)
    assert draft_name() != name


@pytest.mark.parametrize(
    "name",
    [
        "sma_123_0123456789abcdef",
        ".sma_draft_1_2_0123456789abcde",  # 15 hex digits
        ".sma_draft_1_2_0123456789ABCDEF",
        ".sma_draft__2_0123456789abcdef",
        ".sma_draft_1_2_0123456789abcdef.tmp",
        "x.sma_draft_1_2_0123456789abcdef",
    ],
)
def test_other_names_are_not_drafts(name):
    assert parse_draft(name) is None
    assert not is_draft(name)


def test_a_draft_name_is_parsed_into_namespace_and_pid():
    assert parse_draft(".sma_draft_4026531836_4242_0123456789abcdef") == (4026531836, 4242)
