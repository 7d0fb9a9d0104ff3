"""The keepers that unlink a segment if its owner cannot: CPython's resource tracker
(for a killed owner with no manager) and a ``SharedMemoryManager``'s server.

Each function here works on CPython 3.9 to 3.13, through CPython internals: the
tracker's private lock, and the manager's protocol.  The other private CPython
pieces the library leans on: ``_posixshmem`` (in ``_posix``) and the manager's
server internals (in ``_manager``).
"""

from __future__ import annotations

import os
import sys
import threading
from multiprocessing import managers, resource_tracker
from typing import Any, Callable, NamedTuple

from . import _segment
from ._errors import SharedMemoryArrayError

_POSIX = sys.platform != "win32"

# gh-96971: a thread starting the resource tracker holds the tracker's private lock,
# and a child forked meanwhile inherits it held: the child's first register() waits
# forever.  So fork() waits for the lock, and the child finds the tracker started or
# not, never half way.  If the forking thread holds it itself, an RLock lets it in at
# once; a Lock (3.9, 3.10) is given up after _FORK_WAIT and left to its holder.
_FORK_WAIT = 5.0
_forking = threading.local()  # .lock: the tracker lock this thread took for its fork()


def _take_tracker_lock() -> None:
    lock = getattr(resource_tracker._resource_tracker, "_lock", None)
    _forking.lock = lock if lock is not None and lock.acquire(timeout=_FORK_WAIT) else None


def _release_in_parent() -> None:
    lock, _forking.lock = getattr(_forking, "lock", None), None
    if lock is not None:
        lock.release()


def _release_in_child() -> None:
    lock, _forking.lock = getattr(_forking, "lock", None), None
    if lock is None:
        return
    # gh-146313: newer CPythons reset the (reentrant) lock in the child themselves.
    held = lock._is_owned() if hasattr(lock, "_is_owned") else lock.locked()
    if held:
        lock.release()


if _POSIX:
    os.register_at_fork(
        before=_take_tracker_lock,
        after_in_parent=_release_in_parent,
        after_in_child=_release_in_child,
    )


def register_creator(name: str) -> None:
    """Let this process's resource tracker unlink ``name`` if the process is killed.

    Only the creator registers.  A process that attaches never does (gh-82300: the
    tracker of a process that merely attached unlinks the segment when that process
    exits, destroying the creator's data), and it does not register-then-unregister
    either: a multiprocessing child shares its parent's tracker, whose single entry
    per name the unregister would remove.  memfd segments need no tracker: the
    kernel frees them with their creator.
    """
    if _POSIX and not _segment.is_memfd(name):
        resource_tracker.register("/" + name, "shared_memory")


def start_tracker() -> None:
    """Start this process's resource tracker now, before it starts workers.

    A child started by ``fork`` shares its parent's tracker only if the parent had
    one then; otherwise each child starts its own, which unlinks what the child
    registered as soon as the child exits, and which the parent cannot reach.
    """
    if _POSIX:
        resource_tracker.ensure_running()


def unregister_creator(name: str) -> None:
    """Undo `register_creator` once the creator has unlinked ``name`` itself."""
    if _POSIX and not _segment.is_memfd(name):
        resource_tracker.unregister("/" + name, "shared_memory")


class ManagerLink(NamedTuple):
    """How to reach a started ``SharedMemoryManager``'s server from this process."""

    client: Callable[..., Any]
    address: Any
    authkey: bytes
    pid: int  # of the server process; 0 if this process did not start it


def manager_link(manager: object) -> ManagerLink:
    """Check ``manager`` is a started ``SharedMemoryManager`` and return its link."""
    if not isinstance(manager, managers.SharedMemoryManager):
        raise TypeError(
            "expected a multiprocessing.managers.SharedMemoryManager or None "
            f"(got {type(manager).__name__})"
        )
    if manager._state.value != managers.State.STARTED:  # type: ignore[attr-defined]
        raise SharedMemoryArrayError(
            "the SharedMemoryManager is not running: call start() or use it as a "
            "context manager (with SharedMemoryManager() as manager: ...)"
        )
    process = getattr(manager, "_process", None)
    pid = process.pid if process is not None and process.pid is not None else 0
    return ManagerLink(manager._Client, manager.address, manager._authkey, pid)  # type: ignore[attr-defined]


def _dispatch(link: ManagerLink, method: str, name: str) -> None:
    with link.client(link.address, authkey=link.authkey) as conn:
        managers.dispatch(conn, None, method, (name,))  # type: ignore[attr-defined]


def manager_track(link: ManagerLink, name: str) -> None:
    """Ask the manager's server to unlink ``name`` when the manager shuts down."""
    _dispatch(link, "track_segment", name)


def manager_release(link: ManagerLink, name: str) -> None:
    """Unlink ``name`` through the manager and drop it from the manager's list.

    Dropping it matters: at shutdown the stdlib server unlinks its segments in
    order and stops at the first one that is already gone, leaking the rest.
    If the manager is unreachable (shut down, or its process died) the segment is
    unlinked here instead.  Call it only while ``name`` still leads to the segment
    the manager was given.
    """
    try:
        _dispatch(link, "release_segment", name)
    except managers.RemoteError:
        pass  # the server dropped the name, then found the segment already gone
    except (OSError, EOFError):
        _segment.unlink(name)
