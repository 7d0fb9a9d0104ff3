"""Crash-safe locks over a shared array, or a byte range of it, held by the kernel.

Linux open-file-description locks (``F_OFD_SETLK``) on the segment's file: any
process that can open the segment can take them, a lock belongs to the open file
(so two threads of one process exclude each other too), and the kernel releases it
when its holder dies, SIGKILL included.  ``multiprocessing.Lock`` can do none of
that: it cannot be passed as a task argument and stays locked if its holder dies.
Where OFD locks are missing (macOS), ``flock`` locks the whole segment instead.

The descriptor is opened when the lock is acquired and closed when it is
released, so no descriptor is kept between locks.  ``/dev/shm`` is writable by
every user, so what is found under a segment's name is opened without following
symlinks or blocking, and refused unless it is a regular file.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import struct
import threading
import time
import weakref
from types import TracebackType

from . import _segment
from ._errors import LockTimeoutError

__all__ = ["SegmentLock"]

_OFD = hasattr(fcntl, "F_OFD_SETLK")
# struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (0 for OFD locks), padded to 32 bytes.
_FLOCK = struct.Struct("@hhqqi4x")
_BUSY = (errno.EAGAIN, errno.EACCES)
_FIRST_POLL, _LAST_POLL = 0.0005, 0.05
_NO_FD = 1 << 30  # "held" without a descriptor: the lock of an empty region

# A fork()ed child inherits every descriptor open here, and an OFD lock lasts while
# any descriptor of its open file does: the child closes its copies at once, both
# of held locks and of locks another thread was still acquiring, or the parent's
# lock would outlive the parent's release().  _guard makes opening and recording a
# descriptor (and forgetting and closing it) one step as fork() sees it.
_fds: set[int] = set()
_held: weakref.WeakSet[SegmentLock] = weakref.WeakSet()
_guard = threading.RLock()  # reentrant: a release() run by the GC may interrupt a holder


def _before_fork() -> None:
    _guard.acquire()


def _after_fork_in_parent() -> None:
    _guard.release()


def _after_fork_in_child() -> None:
    global _guard
    _guard = threading.RLock()
    for fd in _fds:
        os.close(fd)
    _fds.clear()
    for lock in list(_held):
        lock._fd = -1
    _held.clear()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


def _open(name: str, *, shared: bool) -> int:
    """Open segment ``name`` to lock it; refuse a name that leads to anything else."""
    with _guard:
        fd, _ = _segment.open_file(name, writable=not shared)
        _fds.add(fd)
    return fd


def _close(fd: int) -> None:
    with _guard:
        _fds.discard(fd)
        os.close(fd)


class SegmentLock:
    """A lock on bytes ``[start, start + length)`` of a segment, made by `SharedMemoryArray.lock`.

    Use it as a context manager, or call `acquire` and `release`.  Not reentrant:
    acquiring it again while held raises ``RuntimeError``.  It excludes other
    holders in any process that can open the segment, and in other threads.  Each
    lock object takes the lock through its own open file, so two lock objects on
    overlapping bytes, unless both are shared, exclude each other even in one
    thread.  On Linux only the given bytes are locked; where the system lacks
    open-file-description locks (macOS), the whole segment is.

    A lock object keeps no file descriptor while it is not held: `acquire` opens
    one and `release` closes it.  A held lock is released when its object is
    garbage collected, and by the kernel, at once, when the process holding it
    dies, even by ``SIGKILL``.  A child process forked while the lock is held (or
    awaited by another thread) does not hold it: `locked` is False in the child,
    and the parent's `release` releases it.

    Parameters
    ----------
    name : str
        The segment's name.
    start : int
        The first byte to lock, counted from the segment's first byte (its header
        included); `SharedMemoryArray.lock` computes it for an array or region.
    length : int
        How many bytes to lock.  0 locks nothing, and taking such a lock always
        succeeds.
    shared : bool, default False
        A shared (read) lock instead of an exclusive one.
    timeout : float, optional
        Seconds to wait before raising `LockTimeoutError`.  None waits forever, and
        so do -1 (as for `threading.Lock.acquire`) and infinity.
    blocking : bool, default True
        If False, try once and raise `LockTimeoutError` at once if the lock is taken.

    Raises
    ------
    ValueError
        ``timeout`` is NaN, or negative other than -1 (`threading.Lock.acquire`
        refuses those too): raised here, not at the first acquire.
    """

    _fd = -1  # so __del__ works on a lock whose __init__ failed

    def __init__(
        self,
        name: str,
        start: int,
        length: int,
        *,
        shared: bool = False,
        timeout: float | None = None,
        blocking: bool = True,
    ) -> None:
        if timeout is not None:
            if math.isnan(timeout) or (timeout < 0 and timeout != -1):
                raise ValueError(
                    f"cannot lock {name!r}: expected a timeout of 0 or more seconds, or "
                    f"None or -1 to wait forever (got {timeout!r})"
                )
            if timeout in (-1, math.inf):
                timeout = None
        self._name = name
        self._start = start
        self._length = length
        self._shared = shared
        self._timeout = timeout
        self._blocking = blocking
        self._fd = -1

    @property
    def locked(self) -> bool:
        """Whether this lock is held."""
        return self._fd >= 0

    def acquire(self) -> SegmentLock:
        """Take the lock, waiting as the lock was configured; return it.

        Returns
        -------
        SegmentLock
            This lock object, now held.

        Raises
        ------
        RuntimeError
            This lock object holds the lock already (it is not reentrant).
        LockTimeoutError
            Another holder kept it past ``timeout``, or at once with ``blocking=False``.
        SegmentNotFoundError
            The segment no longer exists, or its name now leads to something else
            (a FIFO, a symlink, a directory).
        """
        if self._fd >= 0:
            raise RuntimeError(f"this lock on {self._name!r} is already held")
        if self._length == 0:  # an empty region: nothing to guard (and to fcntl a
            self._fd = _NO_FD  # length of 0 would mean "up to the end of the file")
            return self
        fd = _open(self._name, shared=self._shared)
        try:
            if self._blocking and self._timeout is None:
                self._try(fd, wait=True)
            else:
                self._poll(fd)
        except BaseException:
            _close(fd)
            raise
        with _guard:
            self._fd = fd
            _held.add(self)
        return self

    def _request(self, kind: int) -> bytes:
        return _FLOCK.pack(kind, os.SEEK_SET, self._start, self._length, 0)

    def _try(self, fd: int, *, wait: bool) -> bool:
        """One attempt; ``wait`` blocks in the kernel until the lock is free."""
        try:
            if _OFD:
                request = self._request(fcntl.F_RDLCK if self._shared else fcntl.F_WRLCK)
                fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, request)
            else:  # pragma: no cover - macOS
                kind = fcntl.LOCK_SH if self._shared else fcntl.LOCK_EX
                fcntl.flock(fd, kind if wait else kind | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _BUSY or exc.errno == errno.EWOULDBLOCK:
                return False
            raise
        return True

    def _poll(self, fd: int) -> None:
        timeout = (self._timeout or 0.0) if self._blocking else 0.0
        deadline = time.monotonic() + timeout
        delay = _FIRST_POLL
        while not self._try(fd, wait=False):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeoutError(
                    f"could not lock {self._name!r} (bytes {self._start} to "
                    f"{self._start + self._length}) within {timeout} s: another process "
                    "or thread holds it",
                    segment=self._name,
                    timeout=timeout,
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _LAST_POLL)

    def release(self) -> None:
        """Release the lock and close its descriptor; does nothing if it is not held."""
        with _guard:
            fd, self._fd = self._fd, -1
            _held.discard(self)
            if fd < 0 or fd == _NO_FD:
                return
            # Unlock first: closing one descriptor releases nothing while another
            # descriptor of the same open file lives on (a dup, or a forked child's).
            try:
                if _OFD:
                    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, self._request(fcntl.F_UNLCK))
                else:  # pragma: no cover - macOS
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                _close(fd)

    def __enter__(self) -> SegmentLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()

    def __repr__(self) -> str:
        kind = "shared" if self._shared else "exclusive"
        state = "held" if self.locked else "free"
        return (
            f"<SegmentLock {self._name!r} bytes {self._start}..{self._start + self._length} "
            f"{kind} {state}>"
        )
