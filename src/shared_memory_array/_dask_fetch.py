"""This host's copy of a published array: attaching it, or fetching it for a host added later.

`publish` places a copy on each host that runs workers at the time.  A host that
joins the cluster afterwards has none: the first of its workers to use the array
makes one (`late_copy`), under a name derived from the published copies and the
host (`late_name`), so that any worker of the host finds it and ``release()``
unlinks it.  The data comes once from a worker on a host with a copy, by tasks
that take the published array as plain data (its copies, shape, dtype token and
order), never the `PublishedArray` itself: this module knows nothing of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from dask.context import thread_state  # where distributed keeps the running task
from distributed import TimeoutError as DaskTimeoutError
from distributed import get_client, get_worker, rejoin, secede
from distributed.threadpoolexecutor import thread_state as executor_thread_state

from . import _hostcopy, _layout, _names, _segment
from ._array import SharedMemoryArray, rebuild
from ._errors import ForeignHostError, ReleasedError, SegmentNotFoundError
from ._host import host_key
from ._segment import Identity

Copies = Mapping[str, tuple[str, Identity]]  # host key -> (segment name, identity)

_T = TypeVar("_T")
_late_lock = threading.Lock()  # one late copy made at a time in this process
_SOURCE_PRIORITY = 1_000_000  # ahead of the work queued on the source workers
_SOURCE_CHECK_SECONDS = 10


# The Dask layer's only call of host_key, shipped to workers by name: a test patches
# host_key here to make a worker process look like it runs on another host.
def host_here() -> str:
    """The key of this process's host (see `host_key`)."""
    return host_key()


def released_error(name: str) -> ReleasedError:
    """The error for a use of this host's copy ``name`` after it was released."""
    return ReleasedError(
        f"published array {name!r} was released on this host ({host_here()}): by "
        "release(), or because every worker and nanny of this host closed",
        segment=name,
    )


def attach(
    name: str, identity: Identity, shape: tuple[int, ...], dtype: np.dtype[Any], fortran: bool
) -> SharedMemoryArray[Any]:
    """A read-only handle to copy ``name`` of this host; a worker holds the copy from now on."""
    # A worker holds its host's copy from its first use (workers that joined
    # after publish()); one it cannot join was released, even if the caller
    # still has a view of it.
    if _hostcopy.is_member() and not _hostcopy.join(name, identity):
        raise released_error(name)
    return rebuild(name, shape, dtype, fortran, None, identity, True)


def view(handle: SharedMemoryArray[Any]) -> npt.NDArray[Any]:
    """``handle.as_array()`` for a handle from `attach`: `ReleasedError` if the copy is gone."""
    try:
        return handle.as_array()
    except SegmentNotFoundError:
        raise released_error(handle.name) from None


def late_name(copies: Mapping[str, tuple[str, Any]], host: str) -> str:
    """The name of the copy of a host that joined after publish() (see `late_copy`)."""
    first = min((name for name, _ in copies.values()), default="")
    digest = hashlib.blake2b(f"{first} {host}".encode(), digest_size=8).hexdigest()
    return f"{_names.PREFIX}late_{digest}"  # 25 characters: fits macOS too


def late_copy(
    copies: Copies, shape: tuple[int, ...], dtype: np.dtype[Any], fortran: bool, here: str
) -> tuple[str, Identity]:
    """The copy of host ``here``, which ran no worker at publish() time: made if need be.

    One process of the host at a time makes it (a lock file), fetching the array
    once from a worker on a host with a copy.

    Raises
    ------
    ForeignHostError
        This process is no Dask worker, or no worker runs on a host with a copy.
    ReleasedError
        The published array was released meanwhile.
    """
    name = late_name(copies, here)
    identity = _segment.identity(name)
    if identity is not None:
        return name, identity
    if not sys.platform.startswith("linux"):
        raise _foreign(copies, here, "copies for hosts added later are made on Linux only")
    try:
        worker = get_worker()
    except ValueError:
        raise _foreign(copies, here, "this process is no Dask worker") from None
    me = worker.address
    array = (copies, shape, _layout.dtype_token(dtype), fortran)  # what _source_view takes
    # Out of the worker's thread pool while waiting for the locks and the source,
    # so that the worker runs other tasks meanwhile (a source's for another host).
    with _seceded(), _late_lock, _hostcopy.claim(name):
        identity = _segment.identity(name)
        if identity is not None:  # made by another worker of this host meanwhile
            return name, identity
        made: Identity | None = None
        try:
            data = _on_a_source(copies, here, me, _source_view, *array)
            made = _hostcopy.create_once(data, fortran, name)
            del data
            # A release() that ran between the fetch and the link missed this
            # copy: check a source still has its copy once this one is in place.
            if made is not None and not _on_a_source(copies, here, me, _source_held, copies):
                made = None
        except ReleasedError:
            made = None
        except BaseException:
            if made is not None:  # in place, but not known to be still published
                _hostcopy.release(name, made)
            raise
    if made is None:
        _hostcopy.release(name, None)
        raise released_error(name)
    return name, made


def _foreign(copies: Copies, here: str, why: str) -> ForeignHostError:
    return ForeignHostError(
        f"no copy of this published array on this host ({here}), and {why} to make "
        f"one: copies were placed on the hosts that ran workers at publish() time "
        f"({', '.join(sorted(copies)) or 'none'}); a worker on a host added "
        "since makes its host's copy at first use",
        host=here,
        hosts=tuple(sorted(copies)),
    )


def _source_view(
    copies: Copies, shape: tuple[int, ...], dtype: np.dtype[Any] | str, fortran: bool
) -> npt.NDArray[Any]:
    """Run on a host with a copy: the data for a host without one."""
    name, identity = copies[host_here()]
    return view(attach(name, identity, shape, _layout.dtype_of_token(dtype), fortran))


def _source_held(copies: Copies) -> bool:
    """Run on a host with a copy: whether it is still there (not released)."""
    name, identity = copies[host_here()]
    return identity.same_mapping(_segment.identity(name))


def _on_a_source(copies: Copies, here: str, me: str, function: Callable[..., _T], *args: Any) -> _T:
    """Run ``function(*args)`` on a worker of a host with a copy; return its result.

    Waits as long as the task is queued, but submits it again if every worker it
    could run on left the cluster (a source worker restarted gets a new address).
    """
    client: Any = get_client()  # distributed is partly untyped
    sources = _sources(client, copies, me)
    while True:
        if not sources:
            raise _foreign(copies, here, "no worker runs on a host with a copy")
        future = client.submit(
            function, *args, workers=sources, pure=False, priority=_SOURCE_PRIORITY
        )
        try:
            while True:
                try:
                    result: _T = future.result(timeout=_SOURCE_CHECK_SECONDS)
                    return result
                except DaskTimeoutError:
                    now = _sources(client, copies, me)
                    if not set(sources) & set(now):
                        sources = now  # every source left: ask others
                        break
        finally:
            client.cancel([future])


def _sources(client: Any, copies: Copies, me: str) -> list[str]:
    """The workers, other than ``me``, that run on a host with one of ``copies``."""
    keys: dict[str, str] = client.run(host_here, on_error="ignore")
    return sorted(address for address, key in keys.items() if key in copies and address != me)


@contextlib.contextmanager
def _seceded() -> Iterator[None]:
    """Leave the worker's thread pool while waiting, if this thread runs a task."""
    # Only a thread of distributed's own executor can leave its pool, and only once
    # (worker_client() or the task itself may have seceded already).
    in_task = getattr(thread_state, "key", None) is not None and (
        getattr(executor_thread_state, "executor", None) is not None
    )
    if in_task:
        try:
            secede()  # type: ignore[no-untyped-call]
        except KeyError:  # already seceded
            in_task = False
    try:
        yield
    finally:
        if in_task:
            rejoin()  # type: ignore[no-untyped-call]
