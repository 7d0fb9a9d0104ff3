"""Crash-safe locks over a shared array, or a byte range of it, held by the kernel.

Linux open-file-description locks (``F_OFD_SETLK``) on the segment's file: any
process that can open the segment can take them, a lock belongs to the open file
(so two threads of one process exclude each other too), and the kernel releases it
when its holder dies, SIGKILL included.  ``multiprocessing.Lock`` can do none of
that: it cannot be passed as a task argument and stays locked if its holder dies.
Where OFD locks are missing (macOS), ``flock`` locks the whole segment instead.

The descriptor is opened when the lock is acquired and closed when it is
released, so no descriptor is kept between locks.
"""

from __future__ import annotations

import _posixshmem
import errno
import fcntl
import os
import struct
import time
import weakref
from types import TracebackType

from ._errors import LockTimeoutError, SegmentNotFoundError

__all__ = ["SegmentLock"]

_OFD = hasattr(fcntl, "F_OFD_SETLK")
# struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (0 for OFD locks), padded to 32 bytes.
_FLOCK = struct.Struct("@hhqqi4x")
_BUSY = (errno.EAGAIN, errno.EACCES)
_FIRST_POLL, _LAST_POLL = 0.0005, 0.05
_NO_FD = 1 << 30  # "held" without a descriptor: the lock of an empty region

# Locks held in this process.  A fork()ed child inherits their descriptors, and an
# OFD lock lasts while any descriptor of its open file does: the child must close
# its copies, or the parent's release() would not release.
_held: weakref.WeakSet[SegmentLock] = weakref.WeakSet()


def _drop_inherited_locks() -> None:
    for lock in list(_held):
        fd, lock._fd = lock._fd, -1
        if fd >= 0 and fd != _NO_FD:
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class SegmentLock:
    """A lock on bytes ``[start, start + length)`` of a segment; see `SharedMemoryArray.lock`.

    Use it as a context manager, or call `acquire` and `release`.  Not reentrant:
    acquiring it again while held raises `RuntimeError`.
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

        Raises
        ------
        LockTimeoutError
            Another holder kept it past ``timeout``, or at once with ``blocking=False``.
        """
        if self._fd >= 0:
            raise RuntimeError(f"this lock on {self._name!r} is already held")
        if self._length == 0:  # an empty region: nothing to guard (and to fcntl a
            self._fd = _NO_FD  # length of 0 would mean "up to the end of the file")
            return self
        try:
            fd = _posixshmem.shm_open(
                "/" + self._name, os.O_RDONLY if self._shared else os.O_RDWR, 0o600
            )
        except FileNotFoundError:
            raise SegmentNotFoundError(
                f"cannot lock {self._name!r}: the segment no longer exists", segment=self._name
            ) from None
        try:
            if self._blocking and self._timeout is None:
                self._try(fd, wait=True)
            else:
                self._poll(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _held.add(self)
        return self

    def _try(self, fd: int, *, wait: bool) -> bool:
        """One attempt; ``wait`` blocks in the kernel until the lock is free."""
        try:
            if _OFD:
                kind = fcntl.F_RDLCK if self._shared else fcntl.F_WRLCK
                request = _FLOCK.pack(kind, os.SEEK_SET, self._start, self._length, 0)
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
        """Release the lock (closing its descriptor releases it); idempotent."""
        fd, self._fd = self._fd, -1
        _held.discard(self)
        if fd >= 0 and fd != _NO_FD:
            os.close(fd)

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
