"""This process's mappings, reused: attaching to a segment already mapped here costs a lookup.

A pool worker unpickles a handle for every task; mapping the segment anew each time
costs system calls (shm_open, fstat, mmap, later munmap) and a header parse.  The
cache keeps one mapping per segment instead, with its parsed layout, under three
rules:

- Never stale, never pinning memory for long.  An attach checks that each
  cached segment's name still leads to the same segment (device, inode, size) and
  drops the mappings of segments unlinked or replaced.  The check costs one
  ``stat`` of ``/dev/shm`` when nothing there changed since the last one (its
  modification time and size change with every segment made or unlinked), and a
  ``stat`` per cached segment when something did.  A memfd segment, of which
  ``/dev/shm`` knows nothing, costs a ``stat`` of its ``/proc`` entry.  A pickled
  handle carries its segment's identity, so it is never given a mapping of
  another segment that took the name, and is served the mapping of its own
  segment even once unlinked; such an attach, a pool worker's every task, checks
  the other cached segments once every `CHECK_SECONDS` at most (checked at every
  task, a worker with two segments cached took 7 µs to unpickle and use a handle,
  against 4 µs).  Every other attach checks them all: an attach by name, or of a
  segment not mapped here.  An owner's unlink drops its entry at once, and so does an
  explicit close of the last live handle of this process on a segment
  (`let_go`); handles merely garbage collected, as a pool task's are, leave it
  for the next task.  `release_cached_mappings` drops
  them all.  Arrays still using a mapping keep it alive, as always.
- Bounded: at most `MAX_ENTRIES` segments, least recently attached dropped first.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from . import _layout, _names, _segment
from ._errors import LayoutError, SegmentNotFoundError
from ._layout import Layout
from ._segment import Bytes, Identity

MAX_ENTRIES = 32
CHECK_SECONDS = 0.05


def add_user(users: list[weakref.ref[Any]], handle: object) -> None:
    """Count ``handle`` among the users of a mapping, weakly: a collected one drops out.

    A plain list, pruned now and then: cheaper than a ``WeakSet``, and attach is hot.
    """
    users.append(weakref.ref(handle))
    count = len(users)
    if count >= 8 and count & (count - 1) == 0:  # at 8, 16, 32...: forget collected ones
        users[:] = [ref for ref in users if ref() is not None]


class Mapped(NamedTuple):
    """A mapped segment, what it is, and what its header says (None: a raw segment)."""

    segment: Bytes
    identity: Identity
    layout: Layout | None
    array: np.ndarray[Any, Any] | None  # the whole array, per ``layout``
    users: list[weakref.ref[Any]]  # this process's live handles over it (`add_user`)

    @classmethod
    def of(cls, segment: Bytes, identity: Identity, layout: Layout | None) -> Mapped:
        array = None if layout is None else layout.view(segment)
        return cls(segment, identity, layout, array, [])


# Reentrant: an owner's finalizer calls forget(), and garbage collection can run
# it in this thread while the lock is held.
_lock = threading.RLock()
_entries: OrderedDict[tuple[str, bool], Mapped] = OrderedDict()  # (name, read-only)
_checked_state: object = None  # /dev/shm's state when every entry was last checked
_memfd_checked = 0.0  # when the memfd entries were last checked (time.monotonic)
_checked = -math.inf  # when every entry had last been checked (time.monotonic)


def _reset_lock() -> None:
    global _lock
    _lock = threading.RLock()  # a thread of the parent may have held it at fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock)


def _remember(key: tuple[str, bool], mapped: Mapped) -> None:
    with _lock:
        _entries[key] = mapped
        _entries.move_to_end(key)
        while len(_entries) > MAX_ENTRIES:
            _entries.popitem(last=False)


def _lookup(key: tuple[str, bool], identity: Identity | None) -> Mapped | None:
    """The cached mapping for ``key`` if still current, after dropping stale entries.

    Call with ``_lock`` held.  Kept apart from `attach` so that no frame of a failed
    attach holds a mapping: an exception's traceback keeps its frames' locals alive,
    and Dask keeps an erred task's traceback (issue 10).
    """
    global _checked_state, _memfd_checked, _checked
    hit = _entries.get(key)
    # A pickled handle naming a segment mapped here is served that mapping: it
    # is the very segment, unlinked or not.
    served = hit is not None and hit.identity.same_mapping(identity)
    if _entries:
        state = _segment.directory_state()
        changed = state is None or state != _checked_state  # something was made or unlinked
        now = time.monotonic()
        memfd_due = changed or now - _memfd_checked >= CHECK_SECONDS
        # An attach by name alone must not be given a memfd its owner has closed.
        by_name = identity is None and _segment.is_memfd(key[0])
        complete = True
        for other, cached in list(_entries.items()) if memfd_due or by_name else ():
            if _segment.is_memfd(other[0]):  # /dev/shm's state says nothing of these
                if not memfd_due and other != key:
                    continue
            elif not changed:
                continue
            if cached.identity.same_mapping(_segment.identity(other[0])):
                continue
            if served and other == key:
                complete = False  # gone, but named by this pickle: serve it once more
            else:
                _entries.pop(other, None)
        if memfd_due:
            _memfd_checked = now
        if changed:
            _checked_state = state if complete else None
        # The memfd entries were checked last (if not now, less than CHECK_SECONDS
        # ago); a gone entry kept to serve once more: check again at the next attach.
        _checked = _memfd_checked if complete else -math.inf
    hit = _entries.get(key)
    if hit is not None and (identity is None or hit.identity.same_mapping(identity)):
        _entries.move_to_end(key)
        return hit
    return None


def attach(
    name: str,
    identity: Identity | None = None,
    *,
    readonly: bool = False,
    validate: bool = True,
    trusted_only: bool = False,
) -> Mapped:
    """Return a mapping of segment ``name``, reusing this process's if still current.

    ``identity`` is what a pickled handle says its segment is; if the name now
    belongs to another segment, that one was unlinked: `SegmentNotFoundError`.
    ``readonly`` mappings are made with ``PROT_READ`` and cached apart.  The
    name is validated before anything is opened, unless ``validate`` is False.
    ``trusted_only`` refuses a segment another user owns or others may write to
    (see `UntrustedSegmentError`) when it is not mapped here already.
    """
    key = (name, readonly)
    if _entries:  # else nothing to serve or check: a process's first attach, say
        hit = _entries.get(key)
        # A pool worker's every task: a segment mapped here, named by the pickle, is
        # served (see `_lookup`); the others are checked now and then.
        if hit is not None and (hit.identity is identity or hit.identity.same_mapping(identity)):
            if len(_entries) == 1:  # reads only: no lock needed
                return hit
            if time.monotonic() - _checked < CHECK_SECONDS:
                # No lock either: one call, atomic under the GIL as the reads are.
                try:  # noqa: SIM105 (suppress() costs more than this whole path)
                    _entries.move_to_end(key)
                except KeyError:  # dropped by another thread meanwhile: still served
                    pass
                return hit
        with _lock:
            hit = _lookup(key, identity)
        if hit is not None:
            return hit
    if validate:
        _names.validate(name)
    segment, found, head = _segment.open_existing(
        name, writable=not readonly, trusted_only=trusted_only
    )
    problem: Exception | None = None
    if identity is not None and not found.same_file(identity):
        problem = SegmentNotFoundError(
            f"shared memory segment {name!r} was unlinked; its name now belongs to another segment",
            segment=name,
        )
    else:
        try:
            mapped = Mapped.of(segment, found, _layout.decode(head, segment.size, name))
        except LayoutError as exc:
            problem = exc
        except (ValueError, TypeError) as exc:
            # NumPy refused a layout the header checks let through
            problem = LayoutError(f"segment {name!r} has a corrupt header: {exc}", segment=name)
    if problem is not None:
        del segment  # a traceback keeps this frame: it must not keep the mapping too
        raise problem
    _remember(key, mapped)
    return mapped


def create(
    name: str | None,
    size: int,
    chunks: Iterable[tuple[int, Bytes]],
    layout: Layout,
    *,
    filled: bool,
    backend: _segment.Backend = _segment.NAMED,
) -> tuple[str, Mapped]:
    """`_segment.create`, remembering the creator's mapping for later attaches here."""
    name, segment, identity = _segment.create(name, size, chunks, filled=filled, backend=backend)
    try:
        mapped = Mapped.of(segment, identity, layout)
    except (ValueError, TypeError) as exc:  # NumPy refused the layout: leave nothing behind
        _segment.unlink(name)
        raise LayoutError(f"cannot lay out segment {name!r}: {exc}", segment=name) from None
    _remember((name, False), mapped)
    return name, mapped


def let_go(name: str, readonly: bool, segment: Bytes, handle: object) -> None:
    """``handle`` was closed: drop the mapping if no other live handle here uses it.

    Arrays still using the mapping keep it, as always; the cache no longer does,
    so closing the last handle frees the memory of an unlinked segment at once.
    Handles that are merely garbage collected leave the entry cached, for the next
    task of a pool worker to reuse.
    """
    key = (name, readonly)
    with _lock:
        entry = _entries.get(key)
        if entry is None or entry.segment is not segment:
            return
        users = entry.users
        if len(users) == 1 and users[0]() is handle:  # the common case: the only one
            users.clear()
        else:
            users[:] = [ref for ref in users if (live := ref()) is not None and live is not handle]
        if not users:
            del _entries[key]


def forget(name: str) -> None:
    """Drop the entry of a segment this process just unlinked."""
    with _lock:
        for readonly in (False, True):
            _entries.pop((name, readonly), None)


def release_cached_mappings() -> int:
    """Drop every mapping this process keeps for reuse; return how many were dropped.

    Each process keeps up to 32 recently used segment mappings (the least
    recently attached goes first), so that attaching again, or using another
    unpickled handle to the same segment, costs a lookup instead of a new
    mapping.  A read-only and a writable mapping of one segment count as two.
    A mapping leaves the cache when its segment is unlinked by its owner here,
    or when an explicit `SharedMemoryArray.close` closes the last handle of this
    process using it; mappings of segments unlinked elsewhere are dropped by
    this process's next attach (the first use of a pickled handle whose
    segment is mapped here already checks at most every 50 ms).  Handles that
    are garbage collected rather than closed leave their mapping cached.  Call
    this function to drop them all now, for example in a long-running process
    after a manager has shut down.

    Arrays and open handles still using a mapping keep it until they are gone;
    what this releases is the memory of segments nothing here uses any more.

    Returns
    -------
    int
        The number of cached mappings dropped.
    """
    if not _entries:  # nothing to drop (read unlocked: a mapping added meanwhile stays)
        return 0
    with _lock:
        count = len(_entries)
        _entries.clear()
    return count
