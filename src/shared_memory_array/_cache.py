"""This process's mappings, reused: attaching to a segment already mapped here costs a lookup.

A pool worker unpickles a handle for every task; mapping the segment anew each time
costs a system call round trip (shm_open, fstat, mmap, later munmap).  The cache
keeps one mapping per segment instead, under three rules:

- Never stale.  A name that was unlinked and made again is a new segment: every
  attach compares each cached entry's identity (device, inode, size) with what the
  name is now, and drops the entries that no longer match.
- Never pins memory for long.  That same check drops mappings of unlinked segments
  no later than the next attach in this process; an owner's unlink drops its entry
  at once; `release_cached_mappings` drops them all.  Arrays still using a mapping
  keep it alive, as always.
- Bounded: at most `MAX_ENTRIES` segments, least recently attached dropped first.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable

from . import _segment
from ._segment import Bytes, Identity

MAX_ENTRIES = 32

_lock = threading.Lock()
_entries: OrderedDict[str, tuple[Identity, Bytes]] = OrderedDict()


def _reset_lock() -> None:
    global _lock
    _lock = threading.Lock()  # a thread of the parent may have held it at fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock)


def _drop_stale() -> None:
    for name, (identity, _) in list(_entries.items()):
        if _segment.identity(name) != identity:
            del _entries[name]


def _remember(name: str, identity: Identity | None, segment: Bytes) -> None:
    if identity is None:  # the backend cannot tell segments apart: never cache
        return
    with _lock:
        _entries[name] = (identity, segment)
        _entries.move_to_end(name)
        while len(_entries) > MAX_ENTRIES:
            _entries.popitem(last=False)


def attach(name: str) -> Bytes:
    """Return a mapping of segment ``name``, this process's existing one if still current."""
    with _lock:
        _drop_stale()
        entry = _entries.get(name)
        if entry is not None:
            _entries.move_to_end(name)
            return entry[1]
    segment, identity = _segment.open_existing(name)
    _remember(name, identity, segment)
    return segment


def create(name: str, size: int, chunks: Iterable[tuple[int, Bytes]], *, filled: bool) -> Bytes:
    """`_segment.create`, remembering the creator's mapping for later attaches here."""
    segment, identity = _segment.create(name, size, chunks, filled=filled)
    _remember(name, identity, segment)
    return segment


def forget(name: str) -> None:
    """Drop the entry of a segment this process just unlinked."""
    with _lock:
        _entries.pop(name, None)


def release_cached_mappings() -> int:
    """Drop every mapping this process keeps for reuse; return how many were dropped.

    Arrays and open handles still using a mapping keep it until they are gone;
    what this releases is the memory of segments nothing here uses any more.
    Mappings of unlinked segments are dropped anyway at the next attach.

    Returns
    -------
    int
        The number of cached mappings dropped.
    """
    with _lock:
        count = len(_entries)
        _entries.clear()
    return count
