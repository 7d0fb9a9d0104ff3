"""Per-host copies of a published array, kept alive by the processes that use them.

A copy published on a host (`shared_memory_array.dask.publish`) has no owner
handle: ownership must not ride on a value that a scheduler copies, moves or
drops.  Instead every member process of the host (one running a Dask worker or
nanny the plugins enrolled) *joins* the copy: it keeps a descriptor of the segment
open with a shared ``flock`` on it.  When a member leaves (teardown), it drops its lock
and tries for an exclusive one without waiting: it gets it only if no other
process still holds the copy, and then it unlinks the segment.  The kernel drops
the locks of a process that dies, so a crashed worker never keeps a copy alive,
and a copy whose every holder crashed has a dead creator, no holder and no
mapping: the CLI's ``clean`` sweep removes it.  `release` unlinks at once,
holders or not; arrays already taken stay valid until they are gone.

``flock`` locks are separate from the ``fcntl`` record locks of ``handle.lock()``
on Linux, so the two never interfere.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _cache, _layout, _segment, _write
from ._errors import SegmentExistsError
from ._segment import Identity

_lock = threading.Lock()
_held: dict[str, tuple[int, Identity]] = {}  # name -> (descriptor with a shared flock, identity)
_members: set[int] = set()  # the Dask workers and nannies of this process


def _after_fork_in_child() -> None:
    # The child's descriptors share the parent's open file descriptions, and with
    # them its locks: unlocking one here would unlock the parent.  Close them
    # unlocked (the parent's descriptors keep the locks) and leave membership to
    # the parent.
    global _lock
    _lock = threading.Lock()
    _members.clear()
    for fd, _ in _held.values():
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def enrol(member: int) -> None:
    """Count ``member`` (a Dask worker or nanny here): this process joins the copies it uses."""
    with _lock:
        _members.add(member)


def withdraw(member: int) -> list[str]:
    """Stop counting ``member``; when it was the last, `leave` every held copy.

    Returns the names this process unlinked.
    """
    with _lock:
        _members.discard(member)
        if _members:
            return []
        names = list(_held)
    return [name for name in names if leave(name)]


def is_member() -> bool:
    return bool(_members)


def _leads_to(name: str, identity: Identity) -> bool:
    return identity.same_file(_segment.identity(name))


def create(data: np.ndarray[Any, Any], fortran: bool, name: str) -> tuple[str, Identity]:
    """Copy ``data`` into a new segment ``name`` of no owner; return its name and identity.

    The copy is laid out in Fortran order if ``fortran`` (and has 2 or more
    dimensions), else in C order.  A member joins it at once; any other process
    must hand it to members.
    """
    dims, dtype = _layout.normalize(data.shape, data.dtype)
    fortran = fortran and len(dims) > 1
    _, mapped = _write.create(name, dims, dtype, fortran, data, keeper=os.getpid())
    _cache.forget(name)  # the mapping goes with ``mapped``; tasks attach read-only
    if _members:
        join(name, mapped.identity)
    return name, mapped.identity


def create_once(data: np.ndarray[Any, Any], fortran: bool, name: str) -> Identity | None:
    """Make copy ``name`` of ``data`` unless a process of this host made it first; join it.

    Several workers of a host may try at once: a segment is written under a draft
    name and renamed to ``name`` only if no other has it (see `_segment.create`),
    so ``name`` never shows a half-written copy.  Returns the identity of the copy
    ``name`` leads to, or None if it is gone again (released meanwhile).
    """
    with contextlib.suppress(SegmentExistsError):  # another worker of this host was first
        create(data, fortran, name)
    current = _segment.identity(name)
    joined = current is not None and join(name, current)
    return current if joined else None


@contextlib.contextmanager
def claim(name: str) -> Iterator[None]:
    """Hold the host-wide lock of copy ``name`` (a lock file beside it) while in the block.

    Whoever gets it must check again whether the copy exists.
    """
    path = _claim_path(name)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # The holder before us removes the file on its way out: a lock on a
            # removed file excludes nobody, so take the lock of the file there now.
            opened, there = os.fstat(fd), os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        if (opened.st_dev, opened.st_ino) == (there.st_dev, there.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        drop_claim(name)  # before closing: the lock goes with the descriptor
        os.close(fd)


def drop_claim(name: str) -> None:
    """Remove the lock file of copy ``name`` (left by a process that died holding it)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_claim_path(name))


def _claim_path(name: str) -> str:
    return _segment.side_file(name)


def join(name: str, identity: tuple[int, int, int]) -> bool:
    """Hold copy ``name`` until `leave`; return False if it is gone."""
    identity = Identity(*identity)  # a plain tuple from a pickle of an older release
    with _lock:
        if name in _held:
            return True
        try:
            fd, st = _segment.open_file(name, writable=False)
        except FileNotFoundError:  # gone, or not a segment
            return False
        try:
            # Waits only while a leaving member holds the exclusive lock to unlink.
            fcntl.flock(fd, fcntl.LOCK_SH)
            if not identity.same_file((st.st_dev, st.st_ino)) or not _leads_to(name, identity):
                os.close(fd)  # another segment took the name, or it was just unlinked
                return False
        except BaseException:
            os.close(fd)
            raise
        _held[name] = (fd, identity)
        return True


def leave(name: str) -> bool:
    """Stop holding copy ``name``; unlink it if no other process holds it.

    Returns whether it was unlinked.
    """
    with _lock:
        entry = _held.pop(name, None)
    if entry is None:
        return False
    fd, identity = entry
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process holds it: the last one to leave unlinks
        if not _leads_to(name, identity):
            return False
        _segment.unlink(name)
        _cache.forget(name)
        return True
    finally:
        os.close(fd)


def release(name: str, identity: Identity | None) -> bool:
    """Unlink copy ``name`` now, whoever holds it; return False if it was gone.

    Without ``identity`` (a copy whose maker never answered) the name alone decides.
    """
    with _lock:
        entry = _held.pop(name, None)
    if entry is not None:
        os.close(entry[0])
    _cache.forget(name)
    if identity is not None and not _leads_to(name, identity):
        return False
    return _segment.unlink(name)


def held() -> list[str]:
    """Names of the copies this process holds."""
    with _lock:
        return sorted(_held)
