"""Shared memory segments: the operating system layer every other module goes through.

A *backend* is one kind of segment: `Backend` says what each must provide.  Today
there is one, named segments in ``/dev/shm`` (`_posix`: POSIX shared memory, Linux;
macOS shares the code, untested); a second kind, such as ``memfd`` segments, slots
in beside it behind the same operations.  A mapped segment is a 1-D ``uint8``
array whose lifetime keeps the mapping alive.  Windows has no ``shm_open`` and is
not supported (see docs/explanation.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Protocol

if sys.platform == "win32":  # pragma: no cover
    raise ImportError(
        "shared-memory-array needs POSIX shared memory (Linux or macOS); Windows is not supported"
    )

from . import _posix

# The named backend's operations (see Backend), and what only named segments have:
# device, directory_state, free_bytes and side_file (the file system that holds them),
# and whether this system can rename them (CAN_RENAME).
from ._posix import (
    CAN_RENAME,
    SHM_DIR,
    Bytes,
    Identity,
    create,
    device,
    directory_state,
    exists,
    free_bytes,
    holders,
    identity,
    names,
    open_existing,
    open_file,
    rename,
    reserve,
    side_file,
    unlink,
)


class Backend(Protocol):
    """The operations a kind of segment provides (a module can be one: `_posix` is).

    Each raises the library's exceptions (`SegmentNotFoundError`,
    `SegmentExistsError`, `OutOfSharedMemoryError`, `InvalidNameError`) with the
    segment's name, or ``OSError`` for what the system refuses otherwise.
    """

    def create(
        self, name: str, size: int, chunks: Iterable[tuple[int, Bytes]] = (), *, filled: bool
    ) -> tuple[Bytes, Identity]:
        """Make segment ``name`` with its memory reserved and ``chunks`` written, and
        publish it only once complete: no process ever attaches it half written."""

    def open_existing(
        self, name: str, *, writable: bool, trusted_only: bool, private: bool
    ) -> tuple[Bytes, Identity, bytes]:
        """Map a whole segment for use: the mapping, its identity and its first bytes;
        ``private``: a copy-on-write mapping whose writes stay in this process."""

    def open_file(self, name: str, *, writable: bool) -> tuple[int, os.stat_result]:
        """Open a segment without mapping it (for locks and inspection)."""

    def reserve(self, fd: int, size: int) -> None:
        """Allocate an open segment's memory now, so that using it cannot SIGBUS."""

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


__all__ = [
    "CAN_RENAME",
    "NAMED",
    "SHM_DIR",
    "Backend",
    "Bytes",
    "Identity",
    "create",
    "device",
    "directory_state",
    "exists",
    "free_bytes",
    "holders",
    "identity",
    "names",
    "open_existing",
    "open_file",
    "rename",
    "reserve",
    "side_file",
    "unlink",
]
