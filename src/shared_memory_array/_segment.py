"""Shared memory segments: the operating system layer every other module goes through.

A *backend* is one kind of segment: `Backend` says what each must provide.  There
are two, both behind the same names and handles:

- named segments in ``/dev/shm`` (`_posix`: POSIX shared memory, Linux; macOS
  shares the code, untested), which outlive their creator until unlinked;
- memfd segments (`_memfd`: Linux), which no ``/dev/shm`` mount limits and which
  the kernel frees with the last descriptor or mapping, reachable by name while
  their creator lives.

A segment's name says its kind (`is_memfd`); `choose` picks the kind of a new one.
A mapped segment is a 1-D ``uint8`` array whose lifetime keeps the mapping alive.
Windows has no ``shm_open`` and is not supported (see docs/explanation.md).
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterable
from typing import Protocol

if sys.platform == "win32":  # pragma: no cover
    raise ImportError(
        "shared-memory-array needs POSIX shared memory (Linux or macOS); Windows is not supported"
    )

from . import _memfd, _posix

# What only named segments have: device, directory_state, free_bytes and side_file
# (the file system that holds them), and whether this system can rename them.
# Refreshable: a private mapping of either kind, kept from one task to the next.
from ._memfd import is_memfd
from ._posix import (
    CAN_REFRESH,
    CAN_RENAME,
    SHM_DIR,
    Bytes,
    Identity,
    Refreshable,
    device,
    directory_state,
    free_bytes,
    reserve,
    side_file,
)

KINDS = ("auto", "named", "memfd")
ENVIRONMENT = "SHARED_MEMORY_ARRAY_BACKEND"  # the kind new segments are, if not given


class Backend(Protocol):
    """The operations a kind of segment provides (a module can be one: `_posix` is).

    Each raises the library's exceptions (`SegmentNotFoundError`,
    `SegmentExistsError`, `OutOfSharedMemoryError`, `InvalidNameError`) with the
    segment's name, or ``OSError`` for what the system refuses otherwise.
    """

    def create(
        self, name: str | None, size: int, chunks: Iterable[tuple[int, Bytes]] = (), *, filled: bool
    ) -> tuple[str, Bytes, Identity]:
        """Make a segment (``name``, or a fresh name) with its memory reserved and
        ``chunks`` written, and publish it only once complete: no process ever
        attaches it half written.  Returns its name, mapping and identity."""

    def open_existing(
        self, name: str, *, writable: bool, trusted_only: bool, private: bool
    ) -> tuple[Bytes, Identity, bytes]:
        """Map a whole segment for use: the mapping, its identity and its first bytes;
        ``private``: a copy-on-write mapping whose writes stay in this process."""

    def open_file(self, name: str, *, writable: bool) -> tuple[int, os.stat_result]:
        """Open a segment without mapping it (for locks and inspection)."""

    def identity(self, name: str) -> Identity | None:
        """What ``name`` leads to now; None if nothing."""

    def exists(self, name: str) -> bool:
        """Whether something has this name."""

    def names(self) -> list[str]:
        """The names there are now, segments or not."""

    def holders(self) -> dict[str, list[int]]:
        """The pids that have each segment mapped or open."""

    def rename(self, name: str, new: str) -> None:
        """Move a segment to an unused name, atomically (how `transfer` hands it over)."""

    def unlink(self, name: str) -> bool:
        """Remove a segment's name; False if it was gone already."""


NAMED: Backend = _posix  # checked against the protocol by mypy
MEMFD: Backend = _memfd


def _of(name: str) -> Backend:
    return MEMFD if is_memfd(name) else NAMED


def choose(requested: str | None, size: int) -> Backend:
    """The backend of a new segment of ``size`` bytes, per ``requested`` (one of
    `KINDS`), else the environment variable `ENVIRONMENT`, else ``'auto'``.

    ``'auto'``: a named segment while ``/dev/shm`` has room for it plus a margin
    (an eighth of the mount, at least 16 MiB, left for others), memfd otherwise
    (where Linux has it), so that a program runs unchanged in a container whose
    ``/dev/shm`` is 64 MB.
    """
    source = "backend"
    if requested is None:
        requested, source = os.environ.get(ENVIRONMENT) or "auto", ENVIRONMENT
    if requested not in KINDS:
        raise ValueError(
            f"{source} must be one of {', '.join(map(repr, KINDS))} (got {requested!r})"
        )
    if requested == "named":
        return NAMED
    if requested == "memfd":
        if not _memfd.AVAILABLE:
            raise OSError(
                errno.ENOTSUP,
                "memfd segments need Linux with memfd_create (3.17+) and /proc; "
                "use backend='named'",
            )
        return MEMFD
    return MEMFD if _memfd.AVAILABLE and not _posix.has_room(size) else NAMED


def create(
    name: str | None,
    size: int,
    chunks: Iterable[tuple[int, Bytes]] = (),
    *,
    filled: bool = False,
    backend: Backend = NAMED,
) -> tuple[str, Bytes, Identity]:
    """Make a segment with ``backend`` (see `Backend.create`); a memfd takes no name."""
    return backend.create(name, size, chunks, filled=filled)


def open_existing(
    name: str, *, writable: bool = True, trusted_only: bool = False, private: bool = False
) -> tuple[Bytes, Identity, bytes]:
    """See `Backend.open_existing`."""
    backend = MEMFD if is_memfd(name) else NAMED  # _of(name), inlined: attach is hot
    return backend.open_existing(
        name, writable=writable, trusted_only=trusted_only, private=private
    )


def open_file(name: str, *, writable: bool) -> tuple[int, os.stat_result]:
    """See `Backend.open_file`."""
    return _of(name).open_file(name, writable=writable)


def identity(name: str) -> Identity | None:
    """See `Backend.identity`."""
    return _of(name).identity(name)


def exists(name: str) -> bool:
    """See `Backend.exists`."""
    return _of(name).exists(name)


def rename(name: str, new: str) -> None:
    """See `Backend.rename`."""
    _of(name).rename(name, new)


def unlink(name: str) -> bool:
    """See `Backend.unlink`."""
    return _of(name).unlink(name)


def freeze(name: str) -> None:
    """Seal memfd segment ``name`` against writable mappings (its creator only)."""
    _memfd.freeze(name)


def frozen(name: str) -> bool:
    """Whether memfd segment ``name``, owned here, is frozen (see `freeze`)."""
    return _memfd.frozen(name)


def send(name: str) -> None:
    """Put memfd segment ``name``, owned here, in flight to another process (see
    `_memfd.send`; a named segment is handed over by `rename`)."""
    _memfd.send(name)


def claim(name: str, identity: Identity) -> str | None:
    """Take memfd segment ``name``, in flight (`send`), as this process's own (see
    `_memfd.claim`); its name here, or None if it was received already."""
    return _memfd.claim(name, identity)


def names(*, memfd: bool = True) -> list[str]:
    """The names of all segments this process can see: ``/dev/shm``'s, and memfd
    ones unless ``memfd`` is False (finding those reads every process's ``/proc``)."""
    found = _posix.names()
    return found + _memfd.names() if memfd and _memfd.AVAILABLE else found


def holders() -> dict[str, list[int]]:
    """The pids that have each segment mapped or open (see `Backend.holders`)."""
    found = _posix.holders()
    if _memfd.AVAILABLE:
        found.update(_memfd.holders())
    return found


__all__ = [
    "CAN_REFRESH",
    "CAN_RENAME",
    "ENVIRONMENT",
    "KINDS",
    "MEMFD",
    "NAMED",
    "SHM_DIR",
    "Backend",
    "Bytes",
    "Identity",
    "Refreshable",
    "choose",
    "claim",
    "create",
    "device",
    "directory_state",
    "exists",
    "free_bytes",
    "freeze",
    "frozen",
    "holders",
    "identity",
    "is_memfd",
    "names",
    "open_existing",
    "open_file",
    "rename",
    "reserve",
    "send",
    "side_file",
    "unlink",
]
