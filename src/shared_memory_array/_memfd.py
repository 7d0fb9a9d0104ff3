"""memfd segments (Linux): shared memory that no ``/dev/shm`` mount limits and that cannot leak.

``memfd_create`` makes an anonymous file in the kernel's own shared memory
filesystem: only the memory cgroup limits it, and the kernel frees it when the
last descriptor and mapping are gone, so a killed program leaves nothing.  Its
creator keeps one descriptor open; any process of the same user in the same PID
namespace opens it again through ``/proc/<creator pid>/fd/<n>`` while the creator
holds it.  So a segment's name says where it is: ``sma_<pid>_fd<n>_<16 hex
digits>``, and the file carries the label ``sma_<16 hex digits>`` (what
``/proc/<pid>/fd/<n>`` shows as ``/memfd:sma_<hex> (deleted)``), which tells it
from whatever file takes that descriptor number later.

Closing the creator's descriptor is this backend's unlink: attaching by name is
refused from then on, and the memory goes with the last mapping.  A segment
handed to another process (`send`, `claim`) changes hands through its header:
the sender keeps its descriptor until the receiver has opened one of its own.  A
fork()ed child closes the descriptors it inherits (see `_after_fork_in_child`),
so that only the owner keeps a segment reachable.  Segments are sealed against
shrinking and growing once written (no process can truncate one under another's
mapping, which would SIGBUS it), and `freeze` seals them against writing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import resource
import secrets
import sys
import threading
import time
from collections.abc import Iterable
from multiprocessing import util

from . import _interrupts, _layout, _memlimit, _posix
from ._errors import FrozenSegmentError, OutOfSharedMemoryError, SegmentNotFoundError
from ._posix import Bytes, Identity

AVAILABLE = (
    sys.platform.startswith("linux")
    and hasattr(os, "memfd_create")
    and os.path.isdir("/proc/self/fd")
)
# fcntl lacks some of these names before Python 3.9 or on old C libraries.
_F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
_F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
_F_SEAL_SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 0x0002)
_F_SEAL_GROW = getattr(fcntl, "F_SEAL_GROW", 0x0004)
_F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)  # Linux 5.1+
_FLAGS = getattr(os, "MFD_CLOEXEC", 1) | getattr(os, "MFD_ALLOW_SEALING", 2)

_NAME = re.compile(r"sma_(\d+)_fd(\d+)_([0-9a-f]{16})\Z")
_LABEL = re.compile(r"/memfd:(sma_[0-9a-f]{16}) \(deleted\)\Z")

# The descriptors of the segments this process owns, by name, and of those it
# has sent (`send`) that no receiver has claimed yet.
_owned: dict[str, int] = {}
_sent: dict[str, int] = {}
_owned_lock = threading.Lock()
_IN_FLIGHT = _layout.keeper_field(0)  # a sent segment's keeper until it is claimed
# How long a process that exits waits for the receivers of what it sent: a pool
# worker may exit (maxtasksperchild, a shutdown) right after sending a result.
_RECEIVERS_SECONDS = 10.0
_exit_wait: util.Finalize | None = None  # runs `_wait_for_receivers` at exit
_watcher: threading.Thread | None = None  # runs `_watch_sent` while some are sent


def _after_fork_in_child() -> None:
    global _owned_lock, _watcher
    _owned_lock = threading.Lock()  # another thread may have held it at fork()
    _watcher = None
    for fd in [*_owned.values(), *_sent.values()]:
        with contextlib.suppress(OSError):
            os.close(fd)
    _owned.clear()
    _sent.clear()


if AVAILABLE:
    os.register_at_fork(after_in_child=_after_fork_in_child)


def is_memfd(name: str) -> bool:
    """Whether ``name`` is a memfd segment's (only this backend makes such names)."""
    return "_fd" in name and _NAME.match(name) is not None  # the test first: attach is hot


def _parts(name: str) -> tuple[int, int, str]:
    found = _NAME.match(name)
    assert found is not None, name  # callers dispatch on is_memfd
    return int(found[1]), int(found[2]), f"sma_{found[3]}"


def _name(fd: int, token: str) -> str:
    """The name of a segment this process holds as ``fd``, labelled ``sma_<token>``."""
    return f"sma_{os.getpid()}_fd{fd}_{token}"


def _where(name: str) -> str:
    pid, fd, _ = _parts(name)
    return f"/proc/{pid}/fd/{fd}"


def _gone(name: str) -> SegmentNotFoundError:
    pid = _parts(name)[0]
    if os.path.exists(f"/proc/{pid}"):
        why = f"its owner, process {pid}, has closed it (or is in another PID namespace)"
    else:
        why = (
            f"its owner, process {pid}, has exited, or runs in another PID namespace, "
            "which memfd segments cannot reach (use backend='named' there)"
        )
    return SegmentNotFoundError(f"memfd segment {name!r} cannot be attached: {why}", segment=name)


def _refused(name: str) -> PermissionError:
    pid = _parts(name)[0]
    return PermissionError(
        errno.EACCES,
        f"memfd segment {name!r} cannot be reopened through /proc/{pid}/fd: the kernel "
        "refuses it (another user's process, a non-dumpable creator, or /proc mounted "
        "with hidepid); use named segments (backend='named') across such a boundary",
    )


def _raise_fd_limit() -> bool:
    """Raise the soft limit of open files to the hard one; False if there already."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = soft * 2
    elif soft >= hard:
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return True


def _new_fd(label: str) -> int:
    try:
        return os.memfd_create(label, _FLAGS)
    except OSError as exc:
        if exc.errno != errno.EMFILE:
            raise
    # Each owned segment keeps a descriptor: at the limit, raise the soft limit to
    # the hard one, as PyTorch does for its shared tensors, and try again.
    if _raise_fd_limit():
        try:
            return os.memfd_create(label, _FLAGS)
        except OSError as exc:
            if exc.errno != errno.EMFILE:
                raise
    raise OSError(
        errno.EMFILE,
        "cannot make a memfd segment: this process has as many open files as its hard "
        "limit allows (each memfd segment it owns keeps one open); close some, or raise "
        "the limit (ulimit -Hn)",
    )


def _out_of_memory(name: str, size: int) -> OutOfSharedMemoryError:
    return OutOfSharedMemoryError(
        f"cannot reserve {size} bytes for memfd segment {name!r}: the memory (or this "
        "container's memory limit) is exhausted",
        segment=name,
        requested=size,
    )


def create(
    name: str | None, size: int, chunks: Iterable[tuple[int, Bytes]] = (), *, filled: bool = False
) -> tuple[str, Bytes, Identity]:
    """Make a memfd segment of ``size`` bytes holding ``chunks``; return its name,
    mapping and identity.  This process keeps it reachable until `unlink`.

    ``name`` must be None: a memfd segment's name says where it is, so it is made here.

    The memory is reserved first (``filled``: by writing every byte; else with
    ``posix_fallocate``), after checking that this process's memory cgroups have
    room for it (see `_memlimit`), so a container at its memory limit gets
    `OutOfSharedMemoryError` here rather than the OOM killer.  The chunk at offset 0, the header, is
    written last: a segment is reachable from its creation (``list`` shows it), and
    a header is what tells a complete one.  Call inside `_interrupts.deferred`.
    """
    if name is not None:
        raise ValueError(f"memfd segments cannot be given a name (got {name!r})")
    room = _memlimit.room()
    if room is not None and size > room:  # past the limit, the OOM killer would come
        raise OutOfSharedMemoryError(
            f"cannot reserve {size} bytes for a memfd segment: the memory cgroup of this "
            f"process (a container's memory limit) has {max(room, 0)} bytes left",
            requested=size,
            available=max(room, 0),
        )
    token = secrets.token_hex(8)
    fd = _new_fd(f"sma_{token}")
    name = _name(fd, token)
    try:
        os.fchmod(fd, 0o600)  # memfds start 0777
        head: list[tuple[int, Bytes]] = []
        try:
            if filled:
                os.ftruncate(fd, size)
            else:
                _posix.reserve(fd, size)
            for offset, data in chunks:
                if offset == 0:
                    head.append((offset, data))
                    continue
                _posix.pwrite_all(fd, offset, data)
                _interrupts.safe_point()
            for offset, data in head:
                _posix.pwrite_all(fd, offset, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EDQUOT):
                raise _out_of_memory(name, size) from None
            raise
        fcntl.fcntl(fd, _F_ADD_SEALS, _F_SEAL_SHRINK | _F_SEAL_GROW)
        segment = _posix.map_fd(fd, size, writable=True)
        found = _posix.identity_of(os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    with _owned_lock:
        _owned[name] = fd
    return name, segment, found


def open_file(name: str, *, writable: bool) -> tuple[int, os.stat_result]:
    """Open memfd segment ``name`` through its creator's ``/proc`` entry, checking
    that the descriptor there is still this segment."""
    try:
        fd = os.open(_where(name), (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _gone(name) from None
    except PermissionError:
        raise _refused(name) from None
    try:
        found = _LABEL.match(os.readlink(f"/proc/self/fd/{fd}"))
        if found is None or found[1] != _parts(name)[2]:  # the number now names another file
            raise _gone(name)
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def open_existing(
    name: str, *, writable: bool = True, trusted_only: bool = False, private: bool = False
) -> tuple[Bytes, Identity, bytes]:
    """Map the whole of memfd segment ``name`` (see `_posix.open_existing`)."""
    fd, st = open_file(name, writable=writable and not private)
    try:
        if trusted_only:
            _posix.check_trusted(name, st)
        try:
            segment = _posix.map_fd(fd, st.st_size, writable, private)
        except PermissionError:  # F_SEAL_FUTURE_WRITE refuses shared writable mappings
            raise FrozenSegmentError(
                f"memfd segment {name!r} is frozen: no process may map it writable; "
                "attach it with readonly=True, or pass handle.as_readonly()",
                segment=name,
            ) from None
        head, length = _posix.read_head(fd, segment)
        if not length:
            segment = None  # type: ignore[assignment]  # unmapped before the error travels
            raise SegmentNotFoundError(
                f"memfd segment {name!r} is still being made (no header yet)", segment=name
            )
        return segment, _posix.identity_of(st), head
    finally:
        os.close(fd)


def identity(name: str) -> Identity | None:
    """What ``name`` leads to now; None if its creator no longer holds it."""
    try:
        return _posix.identity_of(os.stat(_where(name)))
    except OSError:
        return None


def exists(name: str) -> bool:
    """Whether memfd segment ``name`` can be attached (its creator holds it)."""
    try:
        found = _LABEL.match(os.readlink(_where(name)))
    except OSError:
        return False
    return found is not None and found[1] == _parts(name)[2]


def rename(name: str, new: str) -> None:
    """memfd segments cannot be renamed: their name says where they are."""
    raise OSError(errno.ENOTSUP, f"memfd segment {name!r} cannot be renamed")


def unlink(name: str) -> bool:
    """Close this process's descriptor of segment ``name``: no process can attach it
    afterwards.  False if this process does not hold it (not its creator, or closed)."""
    with _owned_lock:
        fd = _owned.pop(name, None)
        if fd is None:
            fd = _sent.pop(name, None)
    if fd is None:
        return False
    os.close(fd)
    return True


def send(name: str) -> None:
    """Put segment ``name``, owned here, in flight to the process that will `claim` it.

    Its header names no keeper from now on, until a receiver claims it by naming
    itself there.  This process holds its descriptor until then (nobody can
    receive a segment once its sender has let go), and lets go soon after, so
    that the memory goes with the receiver's last use: a thread watches the
    segments in flight while there are some.  When this process exits, it
    waits up to `_RECEIVERS_SECONDS` for their receivers.
    """
    global _exit_wait, _watcher
    with _owned_lock:
        fd = _owned.pop(name)
        _sent[name] = fd
        os.pwrite(fd, _IN_FLIGHT, _layout.KEEPER_OFFSET)
        # A multiprocessing finalizer runs in pool workers too, which end with
        # os._exit; a child's start clears those registered before it (while it
        # imports __main__, say), and a fork()ed child inherits this one's.
        if _exit_wait is None or not _exit_wait.still_active():
            _exit_wait = util.Finalize(None, _wait_for_receivers, exitpriority=0)
        if _watcher is None:
            _watcher = threading.Thread(target=_watch_sent, daemon=True)
            _watcher.name = "shared-memory-array-handover"
            _watcher.start()


def claim(name: str, identity: Identity) -> str | None:
    """Make segment ``name``, sent by its owner (`send`), this process's own; return
    the name it has here, or None if it is not in flight (received already).

    Of two processes claiming it, one succeeds: each takes the segment's ``flock``
    to read and write its keeper.  Raises `SegmentNotFoundError` where the sender
    has let go of it (it exited, or waited for a receiver in vain).
    """
    fd, st = open_file(name, writable=True)
    try:
        claimed = identity.same_file(_posix.identity_of(st)) and _take(fd)
    except BaseException:
        os.close(fd)
        raise
    if not claimed:
        os.close(fd)
        return None
    new = _name(fd, _parts(name)[2][4:])
    with _owned_lock:
        _owned[new] = fd
    return new


def _take(fd: int) -> bool:
    """Name this process the keeper of the segment open as ``fd`` if it is in flight."""
    fcntl.flock(fd, fcntl.LOCK_EX)  # held by other receivers for two system calls
    try:
        if os.pread(fd, len(_IN_FLIGHT), _layout.KEEPER_OFFSET) != _IN_FLIGHT:
            return False
        os.pwrite(fd, _layout.keeper_field(os.getpid()), _layout.KEEPER_OFFSET)
        return True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _let_go_of_claimed() -> bool:
    """Close the descriptors of the sent segments that a receiver has claimed;
    whether some are still in flight."""
    with _owned_lock:
        claimed = [
            name
            for name, fd in _sent.items()
            if os.pread(fd, len(_IN_FLIGHT), _layout.KEEPER_OFFSET) != _IN_FLIGHT
        ]
        fds = [_sent.pop(name) for name in claimed]
        waiting = bool(_sent)
    for fd in fds:
        os.close(fd)
    return waiting


def _let_go_as_claimed(deadline: float | None = None) -> None:
    """Let go of the sent segments as they are claimed, until none is in flight or
    ``deadline`` (``time.monotonic``) passes; polled at 1 ms, backing off to 50 ms."""
    pause = 0.001
    while _let_go_of_claimed() and (deadline is None or time.monotonic() < deadline):
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _watch_sent() -> None:
    """The thread `send` starts: let go of what is claimed while anything is in flight."""
    global _watcher
    while True:
        _let_go_as_claimed()
        with _owned_lock:
            if not _sent:  # else one was sent meanwhile: watch it too
                _watcher = None
                return


def _wait_for_receivers() -> None:
    """At exit: wait until each sent segment is claimed, for `_RECEIVERS_SECONDS` at
    most, then let go of all (what nobody received is freed)."""
    _let_go_as_claimed(time.monotonic() + _RECEIVERS_SECONDS)
    with _owned_lock:
        fds = list(_sent.values())
        _sent.clear()
    for fd in fds:
        os.close(fd)


def _owned_fd(name: str) -> int:
    """This process's descriptor of segment ``name``, which it owns."""
    with _owned_lock:
        fd = _owned.get(name)
    if fd is None:
        raise _gone(name)
    return fd


def frozen(name: str) -> bool:
    """Whether segment ``name``, owned here, is sealed against writing (`freeze`)."""
    return bool(fcntl.fcntl(_owned_fd(name), _F_GET_SEALS) & _F_SEAL_FUTURE_WRITE)


def freeze(name: str) -> None:
    """Seal segment ``name`` against writing: no new writable shared mapping, ever.

    Mappings that exist stay as they are.  Only the owner, while it holds it.
    """
    fcntl.fcntl(_owned_fd(name), _F_ADD_SEALS, _F_SEAL_FUTURE_WRITE)


def holders() -> dict[str, list[int]]:
    """Map the name of each memfd segment this user can see to the pids that have it
    open or mapped (Linux; readable ``/proc`` entries only, so this user's processes)."""
    users: dict[str, set[int]] = {}  # by label
    names: dict[str, str] = {}  # label: name, from the descriptor of the creator
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{entry}/maps") as maps:
                for line in maps:
                    if "/memfd:sma_" in line:
                        label = line.split("/memfd:", 1)[1].split(" ", 1)[0]
                        users.setdefault(label, set()).add(pid)
            for fd in os.listdir(f"/proc/{entry}/fd"):
                path = f"/proc/{entry}/fd/{fd}"
                with contextlib.suppress(OSError):  # closed meanwhile
                    found = _LABEL.match(os.readlink(path))
                    if found is None:
                        continue
                    label = found[1]
                    users.setdefault(label, set()).add(pid)
                    if label not in names and _kept_by(path, pid):
                        names[label] = f"sma_{pid}_fd{fd}_{label[4:]}"
        except OSError:  # gone, or not ours to read
            continue
    return {name: sorted(users[label]) for label, name in names.items()}


def _kept_by(path: str, pid: int) -> bool:
    """Whether the segment open at ``path`` (in process ``pid``) is kept by ``pid``,
    as its header says: only its owner's descriptor (its creator's, or its
    receiver's after `claim`) gives a segment its name."""
    with open(path, "rb") as file:
        return _layout.origin(file.read(256)).keeper == pid


def names() -> list[str]:
    """The names of the memfd segments this user's processes hold."""
    return sorted(holders())
