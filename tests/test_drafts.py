"""Drafts, segments still being made: listed, and cleaned once the process making them died."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from shared_memory_array import clean_segments, list_segments, segment_info
from shared_memory_array._layout import encode
from shared_memory_array._namespace import draft_name, pid_namespace

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="list and clean read /dev/shm and /proc"
)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    with subprocess.Popen([sys.executable, "-c", ""]) as finished:
        finished.wait(60)
    return finished.pid


@contextlib.contextmanager
def draft(pid: int, namespace: int | None = None, content: bytes = b"") -> Iterator[str]:
    """A draft as a process killed while making it leaves one; removed at the end."""
    namespace = pid_namespace() if namespace is None else namespace
    name = f".sma_draft_{namespace}_{pid}_{secrets.token_hex(8)}"
    path = f"/dev/shm/{name}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    try:
        yield name
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def listed(name: str):
    found = [info for info in list_segments() if info.name == name]
    return found[0] if found else None


def cleaned(name: str) -> bool:
    return name in [info.name for info in clean_segments()]


def test_an_empty_draft_of_a_dead_process_is_listed_and_cleaned():
    pid = dead_pid()
    with draft(pid) as name:
        info = listed(name)
        assert info is not None and info.draft
        assert (info.shape, info.dtype, info.nbytes, info.size) == ((), "", 0, 0)
        assert (info.creator_pid, info.keeper_pid) == (pid, pid)
        assert not info.creator_alive and not info.keeper_alive and not info.mapped_by
        assert info.pid_namespace == pid_namespace()
        assert info.abandoned
        assert segment_info(name) == info

        assert cleaned(name)
        assert not os.path.exists(f"/dev/shm/{name}")


def test_the_command_line_lists_a_draft():
    with draft(dead_pid()) as name:
        result = subprocess.run(
            [sys.executable, "-m", "shared_memory_array", "list", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        (entry,) = [entry for entry in json.loads(result.stdout) if entry["name"] == name]
        assert entry["draft"] is True and entry["abandoned"] is True


@pytest.mark.parametrize("written", ["half a header", "a whole header"])
def test_a_draft_with_a_header_is_cleaned_too(written):
    header, offset = encode((3,), np.dtype("f8"), False, 1, 1)
    content = header[:30] if written == "half a header" else header.ljust(offset + 24, b"\0")
    pid = dead_pid()
    with draft(pid, content=content) as name:
        info = listed(name)
        assert info is not None and info.draft
        if written == "a whole header":
            assert (info.shape, info.dtype) == ((3,), "float64")
        else:
            assert (info.shape, info.dtype) == ((), "")
        assert (info.creator_pid, info.keeper_pid) == (pid, pid)  # from the name, not the header
        assert cleaned(name)


def test_a_draft_whose_maker_lives_is_kept():
    with draft(os.getpid()) as name:
        info = listed(name)
        assert info is not None and info.creator_alive and not info.abandoned
        assert not cleaned(name)
        assert os.path.exists(f"/dev/shm/{name}")


def test_a_draft_from_another_pid_namespace_is_kept():
    other = pid_namespace() + 1
    with draft(dead_pid(), namespace=other) as name:
        info = listed(name)
        assert info is not None and info.pid_namespace == other
        assert not info.creator_alive and not info.same_pid_namespace and not info.abandoned
        assert not cleaned(name)
        assert os.path.exists(f"/dev/shm/{name}")


def test_a_draft_someone_holds_open_is_kept():
    with draft(dead_pid()) as name:
        fd = os.open(f"/dev/shm/{name}", os.O_RDONLY)
        try:
            info = listed(name)
            assert info is not None and info.mapped_by == [os.getpid()]
            assert not cleaned(name)
        finally:
            os.close(fd)
        assert os.path.exists(f"/dev/shm/{name}")


def test_a_symlink_named_like_a_draft_is_never_followed_nor_removed(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"")
    name = f".sma_draft_{pid_namespace()}_{dead_pid()}_{secrets.token_hex(8)}"
    link = f"/dev/shm/{name}"
    os.symlink(target, link)
    try:
        assert listed(name) is None
        assert not cleaned(name)
        assert os.path.islink(link) and target.exists()
    finally:
        os.unlink(link)


@pytest.mark.skipif(os.getuid() != 0, reason="making another user's draft needs root")
def test_another_users_draft_is_kept():
    with draft(dead_pid()) as name:
        os.chown(f"/dev/shm/{name}", 65534, 65534)
        assert listed(name) is None
        assert not cleaned(name)
        assert os.path.exists(f"/dev/shm/{name}")


def test_hidden_files_not_named_as_drafts_are_left_alone():
    name = f".sma_draft_{dead_pid()}_{secrets.token_hex(8)}"  # no namespace
    path = f"/dev/shm/{name}"
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        assert listed(name) is None
        assert not cleaned(name)
    finally:
        os.unlink(path)


def test_draft_names_made_here_are_the_ones_list_recognises():
    name = draft_name()
    os.close(os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        info = listed(name)
        assert info is not None and info.draft and info.creator_pid == os.getpid()
        assert not info.abandoned
    finally:
        os.unlink(f"/dev/shm/{name}")
