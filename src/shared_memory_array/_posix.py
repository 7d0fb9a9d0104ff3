"""Named shared memory segments on POSIX (Linux, macOS): create, open, map and unlink.

This module talks to the operating system and to nothing else. It does not use
``multiprocessing.shared_memory.SharedMemory`` because that class registers every
segment it opens with the resource tracker (gh-82300: a process that merely
attaches destroys the segment when it exits), and because ``mmap.mmap`` keeps a
duplicate of the file descriptor for the life of the mapping before Python 3.13
(``trackfd=False``), one descriptor per mapping.  So before 3.13 segments are
mapped with libc's ``mmap`` and exposed to NumPy through ``__array_interface__``:
every array over a mapping holds a reference to the `_Mapping` object, so the
mapping is unmapped exactly when the last array using it is gone, never earlier.
From 3.13, ``mmap.mmap(trackfd=False)`` does the same in C.
"""

from __future__ import annotations

import _posixshmem
import contextlib
import ctypes
import errno
import functools
import mmap
import os
import stat
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from . import _interrupts, _layout, _names, _namespace
from ._errors import (
    InvalidNameError,
    OutOfSharedMemoryError,
    SegmentExistsError,
    SegmentNotFoundError,
    UntrustedSegmentError,
)

SHM_DIR = "/dev/shm"
_SHM_PREFIX = SHM_DIR + "/"
_ON_LINUX = sys.platform.startswith("linux")
_CAN_RESERVE = hasattr(os, "posix_fallocate")  # not on macOS
_HEAD_GUESS = 256  # bytes read first: the whole header unless the dtype is long
_COARSE_CLOCK_NS = 100_000_000  # file timestamps may lag by a clock tick (1-10 ms)
_RESERVE_BLOCK = 1 << 28  # fallocate in pieces, so a Ctrl-C stops a large one soon
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC  # what shm_open adds on Linux
_MMAP_KEEPS_NO_FD = sys.version_info >= (3, 13)  # mmap.mmap(trackfd=False)
CAN_RENAME = _ON_LINUX  # see `rename`

_libc = ctypes.CDLL(None, use_errno=True)
_libc_mmap = _libc.mmap
_libc_mmap.restype = ctypes.c_void_p
# No argtypes: converting six arguments through them costs more than the mmap
# call itself, so `map_fd` passes what C expects (None is NULL, a Python int a C
# int) and the 64-bit length and offset as ctypes objects.
_NO_OFFSET = ctypes.c_int64(0)  # off_t is 64 bits on the 64-bit platforms we support
_MAP_FAILED = ctypes.c_void_p(-1).value
_renameat2 = getattr(_libc, "renameat2", None)  # glibc 2.28+; absent on macOS
if _renameat2 is not None:
    _renameat2.restype = ctypes.c_int
    _renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
_AT_FDCWD = -100
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

Bytes = np.ndarray[Any, np.dtype[np.uint8]]


class Identity(NamedTuple):
    """Which file a segment's name led to: tells segments of one name apart."""

    device: int
    inode: int
    size: int

    def same_file(self, other: tuple[int, ...] | None) -> bool:
        """Whether ``other`` is this very segment, whatever its size now.

        The question of ownership: may the owner still unlink the name, may a
        member still hold it.
        """
        return other is not None and self[:2] == tuple(other[:2])

    def same_mapping(self, other: tuple[int, ...] | None) -> bool:
        """Whether a mapping of this segment still serves ``other``: the same file
        at the same size (reading past the end of a shrunk file raises SIGBUS)."""
        return other is not None and self == tuple(other)


class _Mapping:
    """One ``mmap`` of a whole segment, unmapped when the last array over it dies."""

    __slots__ = ("__array_interface__", "__weakref__")

    def __init__(self, address: int, length: int, readonly: bool) -> None:
        self.__array_interface__ = {
            "data": (address, readonly),
            "shape": (length,),
            "typestr": "|u1",
            "version": 3,
        }


# munmap() as the callback of a weak reference to each mapping: called from C with
# no Python frame, so no Ctrl-C can land between the mapping's death and the unmap
# (a __del__ can be interrupted on entry: issue 10).  The callback gets the weak
# reference as a third argument, which munmap ignores (a surplus register argument).
_munmap_callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.py_object
)(("munmap", _libc))
# The weak references live here, not on their mappings: the garbage collector skips
# the callback of a weak reference that dies in the same cycle as its referent.
# Keyed by address, which no two live mappings share: the weak references of
# mappings made and unmapped one after another at the same address would all hash
# alike in a set, and each new one would be compared with all of them.
_unmappers: dict[int, weakref.ref[_Mapping]] = {}
_unmappers_lock = threading.Lock()
_prune_at = 64


def map_fd(fd: int, size: int, writable: bool, private: bool = False) -> Bytes:
    """Map ``fd``'s first ``size`` bytes; ``private``: writable, copy-on-write
    (``MAP_PRIVATE``), so writes stay in this mapping and never reach the segment."""
    global _prune_at, _unmappers
    if size == 0:  # mmap rejects empty mappings; an empty array needs none
        return np.empty(0, dtype=np.uint8)
    if _MMAP_KEEPS_NO_FD:
        # Unmapped in C when the last array over it dies, like the weak reference
        # below, and about 25,000 instructions cheaper than the ctypes calls.
        if private:
            access = mmap.ACCESS_COPY
        else:
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        region = mmap.mmap(fd, size, access=access, trackfd=False)  # type: ignore[call-arg,unused-ignore]
        return np.frombuffer(region, dtype=np.uint8)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable or private else 0)
    flags = mmap.MAP_PRIVATE if private else mmap.MAP_SHARED
    address = _libc_mmap(None, ctypes.c_size_t(size), prot, flags, fd, _NO_OFFSET)
    if address is None or address == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    mapping = _Mapping(address, size, not (writable or private))
    unmap = weakref.ref(mapping, functools.partial(_munmap_callback, address, size))
    with _unmappers_lock:
        _unmappers[address] = unmap  # any earlier one at this address is spent
        if len(_unmappers) >= _prune_at:  # forget the spent ones now and then
            _unmappers = {at: ref for at, ref in _unmappers.items() if ref() is not None}
            _prune_at = max(64, 2 * len(_unmappers))
    return np.asarray(mapping)


# MADV_DONTNEED on a private file mapping drops the pages this process wrote: the
# next access reads the file again.  That is Linux's meaning; macOS keeps them.
CAN_REFRESH = _ON_LINUX and hasattr(mmap, "MADV_DONTNEED")
if CAN_REFRESH:
    _libc_madvise = _libc.madvise
    _libc_madvise.restype = ctypes.c_int
    _libc_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class Refreshable:
    """A private mapping (`map_fd` with ``private``) that task after task in one
    process can use as if it had just been mapped (Linux: `CAN_REFRESH`).

    Mapping and unmapping a large segment for each task costs more than a small
    task itself; refreshing it costs one ``madvise``.
    """

    __slots__ = ("_address", "_clean", "_holder", "_last", "_size")

    def __init__(self, segment: Bytes) -> None:
        self._holder = segment.base  # what keeps it mapped (a memoryview or a _Mapping)
        self._address: int = segment.__array_interface__["data"][0]
        self._size = segment.size
        self._last = weakref.ref(segment)  # every array over the mapping holds this one
        self._clean = False

    def refresh(self) -> bool:
        """Discard what arrays over the mapping wrote (its memory goes back), so
        that every page reads the segment again; False while one of them is alive."""
        if self._clean:
            return True
        if self._last() is not None:
            return False
        if _libc_madvise(self._address, self._size, mmap.MADV_DONTNEED) != 0:
            return False  # e.g. locked in memory (mlockall): map it afresh instead
        self._clean = True
        return True

    def refreshed(self) -> Bytes | None:
        """The mapping as a new array, `refresh`ed first; None if it cannot be."""
        if not self.refresh():
            return None
        segment: Bytes = np.asarray(self._holder)
        self._last, self._clean = weakref.ref(segment), False
        return segment


def free_bytes() -> int | None:
    """Return the bytes free in the shared memory filesystem, if it can be told."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def has_room(size: int) -> bool:
    """Whether the shared memory filesystem can take ``size`` more bytes and still
    keep a margin free for others: an eighth of it, at least 16 MiB (True if it
    cannot be told)."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return True
    margin = max(16 << 20, st.f_blocks * st.f_frsize // 8)
    return st.f_bavail * st.f_frsize >= size + margin


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


def pwrite_all(fd: int, offset: int, data: Bytes) -> None:
    view = memoryview(data)  # type: ignore[arg-type,unused-ignore]  # ndarray exports a buffer
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def identity_of(st: os.stat_result) -> Identity:
    return Identity(st.st_dev, st.st_ino, st.st_size)


def identity(name: str) -> Identity | None:
    """Return the identity of segment ``name`` now, or ``None`` if there is none."""
    try:
        if _ON_LINUX:  # one stat() instead of shm_open + fstat + close
            return identity_of(os.stat(_path(name)))
        fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, 0o600)
    except (OSError, InvalidNameError):  # gone, or not ours to see: not the segment we knew
        return None
    try:
        return identity_of(os.fstat(fd))
    finally:
        os.close(fd)


def names() -> list[str]:
    """The names in the shared memory directory: segments, drafts, anything planted."""
    return os.listdir(SHM_DIR)


def exists(name: str) -> bool:
    """Whether anything has name ``name`` in the shared memory directory (not
    counting a symbolic link that leads nowhere)."""
    return os.path.exists(_path(name))


def device() -> int:
    """The device number of the shared memory filesystem (0 if it cannot be told):
    processes that see the same one can share segments."""
    try:
        return os.stat(SHM_DIR).st_dev
    except OSError:
        return 0


def side_file(name: str) -> str:
    """The path of a lock file beside segment ``name``, that no segment name can take."""
    return _path(f".{name}.lock")  # no segment name starts with "."


def holders() -> dict[str, list[int]]:
    """Map each name in the shared memory directory to the pids that have it mapped
    or open (Linux; readable ``/proc`` entries only, so this user's processes).

    Open counts too: Dask workers hold their host's copies by an open descriptor
    (see ``_hostcopy``) before they map them.
    """
    found: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps") as maps:
                paths = {
                    line.split(_SHM_PREFIX, 1)[1].rstrip("\n")
                    for line in maps
                    if _SHM_PREFIX in line
                }
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):  # closed meanwhile
                    target = os.readlink(f"/proc/{entry}/fd/{fd}")
                    if target.startswith(_SHM_PREFIX):
                        paths.add(target[len(_SHM_PREFIX) :])
        except OSError:  # gone, or not ours to read
            continue
        for name in {path.split(" (deleted)")[0] for path in paths}:
            found.setdefault(name, []).append(int(entry))
    return found


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


def _path(name: str) -> str:
    """The file of segment ``name``, refusing names the OS would read as another name."""
    # Even the _unsafe constructors come here: a NUL would cut the name short, and a
    # '/' would leave /dev/shm.
    if not name or "\0" in name or "/" in name or name in (".", ".."):
        raise InvalidNameError(f"invalid segment name {name!r}", segment=name or None)
    return _SHM_PREFIX + name


# Descriptors of segments being made in this process.  A fork()ed child inherits
# them, and an open descriptor keeps the whole segment allocated: it closes them.
_creating: set[int] = set()


def _after_fork_in_child() -> None:
    global _unmappers_lock
    _unmappers_lock = threading.Lock()  # another thread may have held it at fork()
    for fd in list(_creating):
        with contextlib.suppress(OSError):
            os.close(fd)
    _creating.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def create(
    name: str | None,
    size: int,
    chunks: Iterable[tuple[int, Bytes]] = (),
    *,
    filled: bool = False,
) -> tuple[str, Bytes, Identity]:
    """Create segment ``name`` of ``size`` bytes, write ``chunks`` into it and map it.

    Returns its name, mapping and identity.

    Parameters
    ----------
    name
        The segment's name; None: a fresh one (`_names.generate`).
    chunks
        ``(offset, bytes)`` pairs to write before the segment is mapped.
    filled
        Whether ``chunks`` cover every byte. Writing them then reserves the memory;
        otherwise it is reserved up front with ``posix_fallocate``.  Either way a full
        ``/dev/shm`` gives `OutOfSharedMemoryError` here, never SIGBUS on a later write.

    On Linux the segment is made under a draft name (see `_namespace`) and linked
    to ``name`` only once complete, so no process ever sees it half written, and
    what a process killed meanwhile leaves is a draft that ``clean`` recognises.
    Call it inside `_interrupts.deferred`: a Ctrl-C is delivered between blocks,
    where the draft is sure to be removed.  Mode 0600; nothing is left on failure.
    """
    name = name or _names.generate()
    if not _ON_LINUX:  # pragma: no cover - macOS: no /dev/shm to link in
        return (name, *_create_in_place(name, size, chunks, filled))
    path = _path(name)
    if os.path.lexists(path):  # fail before a long copy; the link below decides
        raise _exists(name)
    draft = os.path.join(SHM_DIR, _namespace.draft_name())
    try:
        fd = os.open(draft, os.O_CREAT | os.O_EXCL | os.O_RDWR | _OPEN_FLAGS, 0o600)
    except OSError as exc:
        raise _creation_error(exc, name, size) from None
    failure: OSError | None = None
    _creating.add(fd)
    try:
        try:
            _fill(fd, size, chunks, filled)
            st = os.fstat(fd)
            renamed = _publish(draft, path)
        except OSError as exc:
            failure = exc
        else:
            try:
                segment = map_fd(fd, size, writable=True) if renamed else _map_linked(path, st)
            except BaseException:
                if identity_of(st).same_file(identity(name)):  # never another's segment
                    os.unlink(path)
                raise
    finally:
        _creating.discard(fd)
        os.close(fd)  # first: an open descriptor keeps an unlinked file's pages
        with contextlib.suppress(FileNotFoundError):  # published: renamed away
            os.unlink(draft)
    if failure is not None:  # raised once the draft is gone, so free space is right
        raise _creation_error(failure, name, size)
    return name, segment, identity_of(st)


def _publish(draft: str, path: str) -> bool:
    """Give the complete draft its name unless the name is taken; False if by a link."""
    # Rename when the C library can: /proc/<pid>/maps and fd show a file by the
    # name it was opened under, and `clean` finds the users of a segment there.
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(draft), _AT_FDCWD, os.fsencode(path), 1) == 0:
            return True  # 1: RENAME_NOREPLACE
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: the filesystem lacks the flag
            raise OSError(err, os.strerror(err), path)
    os.link(draft, path)
    return False


def _map_linked(path: str, expected: os.stat_result) -> Bytes:
    """Map a segment published by a link through its real name (see `_publish`)."""
    fd = os.open(path, os.O_RDWR | _OPEN_FLAGS)
    try:
        if not identity_of(expected).same_file(identity_of(os.fstat(fd))):
            raise FileNotFoundError(errno.ENOENT, "replaced as it was made", path)
        return map_fd(fd, expected.st_size, writable=True)
    finally:
        os.close(fd)


def _exists(name: str) -> SegmentExistsError:
    return SegmentExistsError(f"shared memory segment {name!r} already exists", segment=name)


def _creation_error(exc: OSError, name: str, size: int) -> Exception:
    if exc.errno == errno.EEXIST:
        return _exists(name)
    if exc.errno in _NO_SPACE:  # no room, or (at open or link) no inode left
        return _out_of_memory(name, size)
    return exc


def reserve(fd: int, size: int) -> None:
    """Allocate the memory of the first ``size`` bytes of open segment ``fd`` now,
    so that writing it later cannot fail with SIGBUS; growing the file if shorter.

    Done in pieces, with an interrupt's chance between them (see `_interrupts`).
    Raises ``OSError`` (``ENOSPC``: no room).
    """
    for start in range(0, size, _RESERVE_BLOCK):
        os.posix_fallocate(fd, start, min(_RESERVE_BLOCK, size - start))
        _interrupts.safe_point()


def _fill(fd: int, size: int, chunks: Iterable[tuple[int, Bytes]], filled: bool) -> None:
    """Reserve the segment's memory and write ``chunks``, interruptible between blocks."""
    if filled:
        os.ftruncate(fd, size)
    else:
        reserve(fd, size)
    for offset, data in chunks:
        pwrite_all(fd, offset, data)
        _interrupts.safe_point()


def _create_in_place(  # pragma: no cover - macOS
    name: str, size: int, chunks: Iterable[tuple[int, Bytes]], filled: bool
) -> tuple[Bytes, Identity]:
    """macOS: no draft (no ``/dev/shm``), no ``fallocate`` and no ``write`` on shm."""
    try:
        fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        raise _exists(name) from None
    try:
        os.ftruncate(fd, size)
        segment = map_fd(fd, size, writable=True)
        for offset, data in chunks:
            segment[offset : offset + data.size] = data
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        _posixshmem.shm_unlink("/" + name)
        raise
    os.close(fd)
    return segment, identity_of(st)


def read_head(fd: int, segment: Bytes) -> tuple[bytes, int]:
    """Return the segment's first bytes, holding its whole header, and the header's length."""
    # pread() rather than reading the mapping: touching the mapping would fault in
    # its first page (several microseconds, and a dearer munmap later).  macOS shm
    # objects support no read(), so there the mapping it is.
    head = os.pread(fd, _HEAD_GUESS, 0) if _ON_LINUX else bytes(segment[:_HEAD_GUESS])
    needed = _layout.header_length(head)
    if needed > len(head):
        head = os.pread(fd, needed, 0) if _ON_LINUX else bytes(segment[:needed])
    return head, needed


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
# What open() answers when the name leads to something it cannot open as a file:
# O_NOFOLLOW gives ELOOP for a symlink, O_RDWR EISDIR for a directory, and a
# Unix socket gives ENXIO.
_REFUSED_BY_OPEN = {
    errno.ELOOP: stat.S_IFLNK,
    errno.EISDIR: stat.S_IFDIR,
    errno.ENXIO: stat.S_IFSOCK,
}


def open_file(name: str, *, writable: bool) -> tuple[int, os.stat_result]:
    """Open segment ``name`` and ``fstat`` it: a regular file, never a FIFO, a symlink
    or anything else planted under the name (``/dev/shm`` is world-writable).

    Raises `SegmentNotFoundError` if there is no segment of that name.
    """
    flags = os.O_RDWR if writable else os.O_RDONLY
    try:
        if _ON_LINUX:  # O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever
            fd = os.open(_path(name), flags | os.O_NONBLOCK | _OPEN_FLAGS)
        else:  # pragma: no cover - macOS: shm_open's namespace holds only segments
            fd = int(_posixshmem.shm_open("/" + name, flags, 0o600))
    except FileNotFoundError:
        raise SegmentNotFoundError(
            f"no shared memory segment named {name!r} (never created, or already unlinked)",
            segment=name,
        ) from None
    except OSError as exc:
        if exc.errno not in _REFUSED_BY_OPEN:
            raise
        raise _not_a_segment(name, _REFUSED_BY_OPEN[exc.errno]) from None
    try:
        st = os.fstat(fd)
        if _ON_LINUX and not stat.S_ISREG(st.st_mode):
            raise _not_a_segment(name, stat.S_IFMT(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _not_a_segment(name: str, kind: int) -> SegmentNotFoundError:
    what = _KINDS.get(kind, "a special file")
    return SegmentNotFoundError(
        f"no shared memory segment named {name!r}: {SHM_DIR}/{name} is {what}, "
        "not a shared memory segment",
        segment=name,
    )


def check_trusted(name: str, st: os.stat_result) -> None:
    if st.st_uid != os.geteuid():
        problem = f"is owned by user {st.st_uid}, not by this user ({os.geteuid()})"
    elif st.st_mode & 0o022:
        problem = f"may be written by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    else:
        return
    raise UntrustedSegmentError(
        f"shared memory segment {name!r} {problem}: anyone could have planted or may "
        "change its data; pass allow_untrusted=True to attach it anyway",
        segment=name,
    )


def open_existing(
    name: str, *, writable: bool = True, trusted_only: bool = False, private: bool = False
) -> tuple[Bytes, Identity, bytes]:
    """Map the whole of existing segment ``name``.

    Returns the mapping, the segment's identity, and its first bytes: its whole
    header if it has one (see `_layout.decode`).  With ``trusted_only``, a segment
    another user owns, or others may write to, raises `UntrustedSegmentError`.
    A ``private`` mapping is writable and copy-on-write: the segment is opened
    read-only, and writes through the mapping stay in this process.

    A segment not made by this library may be sparse (``SharedMemory`` only calls
    ``ftruncate``); its pages are reserved here, so using the mapping cannot SIGBUS
    when ``/dev/shm`` fills up (tmpfs allocates a page even on a read of a hole).
    """
    fd, st = open_file(name, writable=writable and not private)
    try:
        if trusted_only:
            check_trusted(name, st)
        size = st.st_size
        segment = map_fd(fd, size, writable, private)
        try:
            head, header_length = read_head(fd, segment)
            if size and not header_length and st.st_blocks * 512 < size:
                _reserve_sparse(fd, name, size, st.st_blocks * 512)
        except BaseException:
            segment = None  # type: ignore[assignment]  # unmapped before the exception travels
            raise
        return segment, Identity(st.st_dev, st.st_ino, size), head  # identity_of, inlined
    finally:
        os.close(fd)


def _reserve_sparse(fd: int, name: str, size: int, committed: int) -> None:
    """Allocate a sparse segment's missing pages, or refuse it if they cannot be."""
    if not _CAN_RESERVE:  # pragma: no cover - macOS
        return
    try:
        writable = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    except OSError:  # read-only to us: reserve nothing, but refuse what cannot fit
        free = free_bytes()
        if free is not None and free < size - committed:
            raise _out_of_memory(name, size) from None
        return
    try:
        reserve(writable, size)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise _out_of_memory(name, size) from None
        raise
    finally:
        os.close(writable)


def rename(name: str, new: str) -> None:
    """Give segment ``name`` the unused name ``new``, atomically: of two processes
    renaming one segment, one succeeds and the other gets `SegmentNotFoundError`.

    Linux only (macOS has no way to rename a POSIX shared memory object).
    """
    if not CAN_RENAME:  # pragma: no cover - macOS
        raise OSError(errno.ENOTSUP, "renaming a shared memory segment needs Linux", name)
    try:
        os.rename(_path(name), _path(new))
    except FileNotFoundError:
        raise SegmentNotFoundError(
            f"no shared memory segment named {name!r} (never created, already unlinked, "
            "or renamed)",
            segment=name,
        ) from None


def unlink(name: str) -> bool:
    """Remove segment ``name``; return False if it was already gone."""
    try:
        if _ON_LINUX:
            os.unlink(_path(name))
        else:  # pragma: no cover - macOS
            _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        return False
    return True
