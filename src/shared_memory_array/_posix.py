"""Named shared memory segments on POSIX (Linux, macOS): create, open, map and unlink.

This module talks to the operating system and to nothing else. It does not use
``multiprocessing.shared_memory.SharedMemory`` because that class registers every
segment it opens with the resource tracker (gh-82300: a process that merely
attaches destroys the segment when it exits), and because ``mmap.mmap`` keeps a
duplicate of the file descriptor for the life of the mapping before Python 3.13
(``trackfd=False``), one descriptor per handle.  Instead segments are mapped with
libc's ``mmap`` and exposed to NumPy through ``__array_interface__``: every array
over a mapping holds a reference to the `_Mapping` object, so the mapping is
unmapped exactly when the last array using it is gone, never earlier.
"""

from __future__ import annotations

import _posixshmem
import ctypes
import errno
import mmap
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import _layout
from ._errors import OutOfSharedMemoryError, SegmentExistsError, SegmentNotFoundError

SHM_DIR = "/dev/shm"
_ON_LINUX = sys.platform.startswith("linux")
_CAN_RESERVE = hasattr(os, "posix_fallocate")  # not on macOS
_HEAD_GUESS = 256  # bytes read first: the whole header unless the dtype is long
_COARSE_CLOCK_NS = 100_000_000  # file timestamps may lag by a clock tick (1-10 ms)

_libc = ctypes.CDLL(None, use_errno=True)
_libc_mmap = _libc.mmap
_libc_mmap.restype = ctypes.c_void_p
_libc_mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int64,  # off_t is 64 bits on the 64-bit platforms we support
]
_libc_munmap = _libc.munmap
_libc_munmap.restype = ctypes.c_int
_libc_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

Bytes = np.ndarray[Any, np.dtype[np.uint8]]
Identity = tuple[int, int, int]
"""What tells one segment from another of the same name: (device, inode, size)."""


class _Mapping:
    """One ``mmap`` of a whole segment, unmapped when the last array over it dies."""

    __slots__ = ("__array_interface__", "address", "length")

    def __init__(self, address: int, length: int, readonly: bool) -> None:
        self.address = address
        self.length = length
        self.__array_interface__ = {
            "data": (address, readonly),
            "shape": (length,),
            "typestr": "|u1",
            "version": 3,
        }

    def __del__(self, _munmap: Any = _libc_munmap) -> None:
        if getattr(self, "length", 0):  # __init__ may not have run
            _munmap(self.address, self.length)


def _map(fd: int, size: int, writable: bool) -> Bytes:
    if size == 0:  # mmap rejects empty mappings; an empty array needs none
        return np.empty(0, dtype=np.uint8)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    address = _libc_mmap(None, size, prot, mmap.MAP_SHARED, fd, 0)
    if address is None or address == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return np.asarray(_Mapping(address, size, not writable))


def free_bytes() -> int | None:
    """Return the bytes free in the shared memory filesystem, if it can be told."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _out_of_memory(name: str, size: int) -> OutOfSharedMemoryError:
    free = free_bytes()
    where = f"{SHM_DIR} has {free} bytes free" if free is not None else "shared memory is full"
    return OutOfSharedMemoryError(
        f"cannot reserve {size} bytes for shared memory segment {name!r}: {where}; "
        f"free space in {SHM_DIR} or mount it larger (e.g. docker run --shm-size)",
        segment=name,
        requested=size,
        available=free,
    )


def _pwrite_all(fd: int, offset: int, data: Bytes) -> None:
    view = memoryview(data)  # type: ignore[arg-type]  # ndarray exports a buffer
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _identity(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino, st.st_size)


def identity(name: str) -> Identity | None:
    """Return the identity of segment ``name`` now, or ``None`` if there is none."""
    try:
        if _ON_LINUX:  # one stat() instead of shm_open + fstat + close
            return _identity(os.stat(os.path.join(SHM_DIR, name)))
        fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, 0o600)
    except OSError:  # gone, or not ours to see: not the segment we knew
        return None
    try:
        return _identity(os.fstat(fd))
    finally:
        os.close(fd)


def directory_state() -> tuple[int, int, int] | None:
    """A token that changes whenever a segment is made or unlinked; None: can't tell.

    Linux updates ``/dev/shm``'s modification time and size (tmpfs counts its
    entries in it) with every name added or removed.  Its timestamps are coarse,
    one clock tick, so a directory changed in the last moments gives no token.
    """
    if not _ON_LINUX:
        return None
    try:
        st = os.stat(SHM_DIR)
    except OSError:
        return None
    if time.time_ns() - st.st_mtime_ns < _COARSE_CLOCK_NS:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def create(
    name: str, size: int, chunks: Iterable[tuple[int, Bytes]] = (), *, filled: bool = False
) -> tuple[Bytes, Identity]:
    """Create segment ``name`` of ``size`` bytes, write ``chunks`` into it and map it.

    Parameters
    ----------
    chunks
        ``(offset, bytes)`` pairs to write before the segment is mapped.
    filled
        Whether ``chunks`` cover every byte. Writing them then reserves the memory;
        otherwise it is reserved up front with ``posix_fallocate``.  Either way a full
        ``/dev/shm`` gives `OutOfSharedMemoryError` here, never SIGBUS on a later write.

    The segment is made with ``O_CREAT | O_EXCL`` and mode 0600, and unlinked again if
    anything fails, so no partial segment is left.
    """
    try:
        fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        raise SegmentExistsError(
            f"shared memory segment {name!r} already exists", segment=name
        ) from None
    try:
        segment = _fill_and_map(fd, size, chunks, filled)
        st = os.fstat(fd)
    except BaseException as exc:
        os.close(fd)  # first: an open descriptor keeps an unlinked file's pages
        _posixshmem.shm_unlink("/" + name)
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            raise _out_of_memory(name, size) from None
        raise
    os.close(fd)
    return segment, _identity(st)


def _fill_and_map(fd: int, size: int, chunks: Iterable[tuple[int, Bytes]], filled: bool) -> Bytes:
    if not _CAN_RESERVE:  # macOS: no fallocate, and no write() on shm
        os.ftruncate(fd, size)
        segment = _map(fd, size, writable=True)
        for offset, data in chunks:
            segment[offset : offset + data.size] = data
        return segment
    if filled:
        os.ftruncate(fd, size)
    else:
        os.posix_fallocate(fd, 0, size)
    for offset, data in chunks:
        _pwrite_all(fd, offset, data)
    return _map(fd, size, writable=True)


def _read_head(fd: int, segment: Bytes) -> tuple[bytes, int]:
    """Return the segment's first bytes, holding its whole header, and the header's length."""
    # pread() rather than reading the mapping: touching the mapping would fault in
    # its first page (several microseconds, and a dearer munmap later).  macOS shm
    # objects support no read(), so there the mapping it is.
    head = os.pread(fd, _HEAD_GUESS, 0) if _ON_LINUX else bytes(segment[:_HEAD_GUESS])
    needed = _layout.header_length(head)
    if needed > len(head):
        head = os.pread(fd, needed, 0) if _ON_LINUX else bytes(segment[:needed])
    return head, needed


def open_existing(name: str, *, writable: bool = True) -> tuple[Bytes, Identity, bytes]:
    """Map the whole of existing segment ``name``.

    Returns the mapping, the segment's identity, and its first bytes: its whole
    header if it has one (see `_layout.decode`).

    A segment not made by this library may be sparse (``SharedMemory`` only calls
    ``ftruncate``); its pages are reserved here, so writing through the mapping
    cannot SIGBUS when ``/dev/shm`` fills up.
    """
    flags = os.O_RDWR if writable else os.O_RDONLY
    try:
        fd = _posixshmem.shm_open("/" + name, flags, 0o600)
    except FileNotFoundError:
        raise SegmentNotFoundError(
            f"no shared memory segment named {name!r} (never created, or already unlinked)",
            segment=name,
        ) from None
    try:
        st = os.fstat(fd)
        size = st.st_size
        segment = _map(fd, size, writable)
        head, header_length = _read_head(fd, segment)
        if writable and size and not header_length and _CAN_RESERVE:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno in _NO_SPACE:
                    raise _out_of_memory(name, size) from None
                raise
        return segment, _identity(st), head
    finally:
        os.close(fd)


def unlink(name: str) -> bool:
    """Remove segment ``name``; return False if it was already gone."""
    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        return False
    return True
