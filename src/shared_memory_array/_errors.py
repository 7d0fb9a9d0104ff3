"""Exceptions raised by shared-memory-array.

Every exception names the segment it is about (``exc.segment``, ``None`` when no
segment exists yet) and subclasses the builtin that code already catches:

```text
SharedMemoryArrayError(Exception)
├── SegmentNotFoundError(FileNotFoundError)
│   ├── ForeignHostError
│   └── ReleasedError
├── SegmentExistsError(FileExistsError)
├── NotOwnerError(PermissionError)
├── UntrustedSegmentError(PermissionError)
├── FrozenSegmentError(PermissionError)
├── OutOfSharedMemoryError(OSError, MemoryError)
├── LockTimeoutError(TimeoutError)
├── InvalidNameError(ValueError)
├── LayoutError(ValueError)
├── ClosedHandleError(ValueError)
└── UnsupportedDtypeError(TypeError)
```

They pickle (exceptions raised in a worker travel back to the parent by pickle):
``BaseException.__reduce__`` sends ``(type, args, __dict__)``, so each constructor
takes the message alone and keeps its data as attributes.
"""

from __future__ import annotations

import errno

__all__ = [
    "ClosedHandleError",
    "ForeignHostError",
    "FrozenSegmentError",
    "InvalidNameError",
    "LayoutError",
    "LockTimeoutError",
    "NotOwnerError",
    "OutOfSharedMemoryError",
    "ReleasedError",
    "SegmentExistsError",
    "SegmentNotFoundError",
    "SharedMemoryArrayError",
    "UnsupportedDtypeError",
    "UntrustedSegmentError",
]


class SharedMemoryArrayError(Exception):
    """Base class of every exception this library raises.

    Also raised itself when the ``manager`` given to `SharedMemoryArray.allocate`,
    ``allocate_like`` or ``copy`` (or their ``_unsafe`` twins, `share`, `zeros`,
    `empty`) is not running: it was never started, or was shut down.

    Attributes
    ----------
    segment : str or None
        Name of the shared memory segment concerned.
    """

    def __init__(self, message: str, *, segment: str | None = None) -> None:
        super().__init__(message)
        self.segment = segment


class SegmentNotFoundError(SharedMemoryArrayError, FileNotFoundError):
    """No shared memory segment has this name (never made, or already unlinked)."""

    def __init__(self, message: str, *, segment: str | None = None) -> None:
        super().__init__(message, segment=segment)
        self.errno = errno.ENOENT


class ForeignHostError(SegmentNotFoundError):
    """The handle names a segment on another host: shared memory never crosses machines.

    Raised at first use of a handle pickled on one host (or in one container with
    its own ``/dev/shm``) and unpickled on another.  Publish the array on every host
    instead (`shared_memory_array.dask.publish`).

    Attributes
    ----------
    host : str
        The host key of the process that raised (see `shared_memory_array.dask.host_key`).
    hosts : tuple of str
        The host keys that hold a copy of the array.
    """

    def __init__(
        self,
        message: str,
        *,
        segment: str | None = None,
        host: str = "",
        hosts: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, segment=segment)
        self.host = host
        self.hosts = hosts


class ReleasedError(SegmentNotFoundError):
    """A published array's copy on this host was released (or every worker here left)."""


class SegmentExistsError(SharedMemoryArrayError, FileExistsError):
    """A segment with the requested name already exists; it was left untouched."""

    def __init__(self, message: str, *, segment: str | None = None) -> None:
        super().__init__(message, segment=segment)
        self.errno = errno.EEXIST


class NotOwnerError(SharedMemoryArrayError, PermissionError):
    """Only the handle that created a segment may unlink it."""

    def __init__(self, message: str, *, segment: str | None = None) -> None:
        super().__init__(message, segment=segment)
        self.errno = errno.EPERM


class UntrustedSegmentError(SharedMemoryArrayError, PermissionError):
    """A segment another user owns, or others may write to, was attached by name.

    Anyone can create files in ``/dev/shm``: such a segment may have been planted
    under a name a program uses, and its data changed at any time.  Pass
    ``allow_untrusted=True`` to `SharedMemoryArray.attach` to attach it anyway.
    """

    def __init__(self, message: str, *, segment: str | None = None) -> None:
        super().__init__(message, segment=segment)
        self.errno = errno.EACCES


class FrozenSegmentError(SharedMemoryArrayError, PermissionError):
    """A frozen segment (see `SharedMemoryArray.freeze`) was to be mapped writable.

    No process may write to it again: attach it with ``readonly=True``, or pass
    a read-only handle (`SharedMemoryArray.as_readonly`).
    """

    def __init__(self, message: str, *, segment: str | None = None) -> None:
        super().__init__(message, segment=segment)
        self.errno = errno.EPERM


class OutOfSharedMemoryError(SharedMemoryArrayError, OSError, MemoryError):
    """The shared memory filesystem cannot hold the segment.

    Attributes
    ----------
    requested : int or None
        Bytes the segment needed.
    available : int or None
        Bytes free in the shared memory filesystem when the request failed.
    """

    def __init__(
        self,
        message: str,
        *,
        segment: str | None = None,
        requested: int | None = None,
        available: int | None = None,
    ) -> None:
        super().__init__(message, segment=segment)
        self.errno = errno.ENOSPC
        self.requested = requested
        self.available = available


class LockTimeoutError(SharedMemoryArrayError, TimeoutError):
    """A lock on a shared array was held by someone else for longer than allowed.

    Attributes
    ----------
    timeout : float or None
        The seconds waited (0 for ``blocking=False``).
    """

    def __init__(
        self, message: str, *, segment: str | None = None, timeout: float | None = None
    ) -> None:
        super().__init__(message, segment=segment)
        self.errno = errno.ETIMEDOUT
        self.timeout = timeout


class InvalidNameError(SharedMemoryArrayError, ValueError):
    """A segment name is not a portable shared memory name.

    A valid name is a ``str`` of 1 to 255 characters (30 on macOS) from
    ``A-Z a-z 0-9 _ . -``, not starting with ``.`` or ``-`` (so no leading ``/``:
    one segment never has two spellings).  The ``_unsafe`` constructors skip
    these rules but still raise this error for a name the system would read as
    another: one with a NUL character or a ``/``, or ``.`` or ``..``.
    """


class LayoutError(SharedMemoryArrayError, ValueError):
    """A shape, dtype or order is invalid, or does not match the segment."""


class ClosedHandleError(SharedMemoryArrayError, ValueError):
    """The handle was closed; arrays taken from it before stay valid."""


class UnsupportedDtypeError(SharedMemoryArrayError, TypeError):
    """The dtype cannot live in shared memory (object fields hold process-local pointers)."""
