"""One shared copy of an array per host for Dask distributed.

``client.scatter(array, broadcast=True)`` gives every worker process a private copy
of the array.  `publish` instead places one read-only copy in shared memory on
each host that runs workers and returns a `PublishedArray`: a small value tasks
take as a plain argument, and that gives each task a zero-copy view of its own
host's copy:

```python
from shared_memory_array.dask import publish

published = publish(client, weights)          # one copy per host
futures = client.map(score, batches, weights=published)
...                                           # in score(): weights.as_array()
published.release()                           # or: with publish(...) as published:
```

Needs the ``dask`` extra (``pip install 'shared-memory-array[dask]'``).  See
docs/cluster.md for how copies are kept and cleaned up.
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

try:
    from dask.context import thread_state  # where distributed keeps the running task
    from distributed import Client, get_client, get_worker, rejoin, secede
    from distributed import TimeoutError as DaskTimeoutError
    from distributed.threadpoolexecutor import thread_state as executor_thread_state
except ImportError as exc:  # pragma: no cover - the extra is installed in tests
    raise ImportError(
        "shared_memory_array.dask needs Dask distributed: pip install 'shared-memory-array[dask]'"
    ) from exc

from . import _hostcopy, _layout, _names, _segment
from ._array import SharedMemoryArray, rebuild
from ._dask_plugins import SharedMemoryArrayPlugin, register_plugins
from ._errors import ForeignHostError, ReleasedError, SegmentNotFoundError
from ._host import host_key
from ._segment import Identity

__all__ = ["PublishedArray", "SharedMemoryArrayPlugin", "host_key", "publish"]

# Reprs, docs and pickles name this module, wherever the plugin is defined.
SharedMemoryArrayPlugin.__module__ = __name__

_Copies = Mapping[str, tuple[str, Identity]]  # host key -> (segment name, identity)


class PublishedArray:
    """A read-only array with one copy in shared memory on each host of a Dask cluster.

    Made by `publish`.  It pickles to the segment name of each host's copy, so
    passing it to tasks costs the same whatever the array's size; unpickling it
    touches no shared memory.  In a task, `as_array` returns a zero-copy,
    read-only view of the copy on the task's host, and so do calling it,
    ``published()``, and ``np.asarray(published)`` (it implements NumPy's
    ``__array__``); ``np.array(published)`` returns a writable copy.  Dropping
    it, or letting Dask copy or forget it, never frees anything: `release` does,
    and so does leaving a ``with publish(...) as published:`` block.
    """

    def __init__(
        self,
        copies: _Copies,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        fortran: bool,
        client: Client | None = None,
    ) -> None:
        self._copies = dict(copies)
        self._shape = shape
        self._dtype = dtype
        self._fortran = fortran
        self._client = client  # the publishing process's client; never pickled

    @property
    def hosts(self) -> dict[str, str]:
        """The segment name of the copy on each host, by host key (see `host_key`)."""
        return {host: name for host, (name, _) in self._copies.items()}

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the array."""
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        """Data type of the array."""
        return self._dtype

    @property
    def nbytes(self) -> int:
        """Size of the array in bytes (of each host's copy)."""
        return _layout.count(self._shape) * self._dtype.itemsize

    def handle(self) -> SharedMemoryArray[Any]:
        """Return a read-only handle to this host's copy.

        It works like any attached handle: pass it to local processes
        (``multiprocessing``, joblib) on this host.  On a host that joined the
        cluster after `publish`, the first worker to use the array makes the
        host's copy, from a host that has one.

        Raises
        ------
        ForeignHostError
            This host holds no copy, and this process is no Dask worker that could
            make one (or no worker of the cluster runs on a host with a copy).
        ReleasedError
            The copy was released.
        """
        here = host_key()
        copy = self._copies.get(here) or self._late_copy(here)
        name, identity = copy
        # A worker holds its host's copy from its first use (workers that joined
        # after publish()); one it cannot join was released, even if this object
        # still has a view of it.
        if _hostcopy.is_member() and not _hostcopy.join(name, identity):
            raise _released(name)
        # A new handle each time: the process's attach cache keeps the mapping, and
        # forgets it on release; a handle kept here would keep a released copy mapped
        # for as long as Dask keeps this object.
        return rebuild(name, self._shape, self._dtype, self._fortran, None, identity, True)

    def _late_copy(self, here: str) -> tuple[str, Identity]:
        """This host's copy, for a host that ran no worker at publish() time.

        Its name is derived from the published copies and the host, so any worker
        of the host finds it, and `release` unlinks it.  One process of the host
        at a time makes it (a lock file), fetching the array once from a worker
        on a host with a copy.
        """
        name = _late_name(self._copies, here)
        identity = _segment.identity(name)
        if identity is not None:
            return name, identity
        if not sys.platform.startswith("linux"):
            raise self._foreign(here, "copies for hosts added later are made on Linux only")
        try:
            worker = get_worker()
        except ValueError:
            raise self._foreign(here, "this process is no Dask worker") from None
        # Out of the worker's thread pool while waiting for the locks and the source,
        # so that the worker runs other tasks meanwhile (a source's for another host).
        with _seceded(), _late_lock, _hostcopy.claim(name):
            identity = _segment.identity(name)
            if identity is not None:  # made by another worker of this host meanwhile
                return name, identity
            made: Identity | None = None
            try:
                data = _on_a_source(self, here, worker.address, _source_view)
                made = _hostcopy.create_once(data, self._fortran, name)
                del data
                # A release() that ran between the fetch and the link missed this
                # copy: check a source still has its copy once this one is in place.
                if made is not None and not _on_a_source(self, here, worker.address, _source_held):
                    made = None
            except ReleasedError:
                made = None
            except BaseException:
                if made is not None:  # in place, but not known to be still published
                    _hostcopy.release(name, made)
                raise
        if made is None:
            _hostcopy.release(name, None)
            raise _released(name)
        return name, made

    def _foreign(self, here: str, why: str) -> ForeignHostError:
        return ForeignHostError(
            f"no copy of this published array on this host ({here}), and {why} to make "
            f"one: copies were placed on the hosts that ran workers at publish() time "
            f"({', '.join(sorted(self._copies)) or 'none'}); a worker on a host added "
            "since makes its host's copy at first use",
            host=here,
            hosts=tuple(sorted(self._copies)),
        )

    def as_array(self) -> npt.NDArray[Any]:
        """Return a read-only, zero-copy view of this host's copy.

        Raises
        ------
        ForeignHostError
            This host holds no copy and none can be made (see `handle`).
        ReleasedError
            The copy was released (`release`, or every worker and nanny of this
            host closed).
        """
        handle = self.handle()
        try:
            return handle.as_array()
        except SegmentNotFoundError:
            raise _released(handle.name) from None

    __call__ = as_array

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> Any:
        """NumPy conversion: ``np.asarray(published)`` is the view `as_array` returns.

        ``np.array(published)`` is a writable copy, as is a conversion to another
        ``dtype``.  Errors are those of `as_array`.
        """
        self.as_array()  # the errors as_array() documents
        return self.handle().__array__(dtype, copy)

    def release(self, client: Client | None = None) -> None:
        """Unlink every host's copy now.  Idempotent.

        Views already taken stay valid until they are gone; new uses raise
        `ReleasedError`.

        Parameters
        ----------
        client : distributed.Client, optional
            The client to reach the workers with; by default the one given to
            `publish`, or the current one.
        """
        client = client or self._client or get_client()
        _release_everywhere(client, self._copies)

    def __enter__(self) -> PublishedArray:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self._copies, self._shape, _layout.dtype_token(self._dtype), self._fortran)
        return (_rebuild_published, args)

    def __repr__(self) -> str:
        return f"<PublishedArray shape={self._shape} dtype={self._dtype} hosts={len(self._copies)}>"


def _released(name: str) -> ReleasedError:
    return ReleasedError(
        f"published array {name!r} was released on this host ({host_key()}): by "
        "release(), or because every worker and nanny of this host closed",
        segment=name,
    )


def _late_name(copies: Mapping[str, tuple[str, Any]], host: str) -> str:
    """The name of the copy of a host that joined after publish() (`PublishedArray.handle`)."""
    first = min((name for name, _ in copies.values()), default="")
    digest = hashlib.blake2b(f"{first} {host}".encode(), digest_size=8).hexdigest()
    return f"{_names.PREFIX}late_{digest}"  # 25 characters: fits macOS too


def _host_here() -> str:
    return host_key()


def _source_view(published: PublishedArray) -> npt.NDArray[Any]:
    """Run on a host with a copy: the data for a host without one."""
    return published.as_array()


def _source_held(published: PublishedArray) -> bool:
    """Run on a host with a copy: whether it is still there (not released)."""
    name, identity = published._copies[host_key()]
    return identity.same_mapping(_segment.identity(name))


_T = TypeVar("_T")
_late_lock = threading.Lock()  # one late copy made at a time in this process
_SOURCE_PRIORITY = 1_000_000  # ahead of the work queued on the source workers
_SOURCE_CHECK_SECONDS = 10


def _on_a_source(
    published: PublishedArray, here: str, me: str, function: Callable[[PublishedArray], _T]
) -> _T:
    """Run ``function(published)`` on a worker of a host with a copy; return its result.

    Waits as long as the task is queued, but submits it again if every worker it
    could run on left the cluster (a source worker restarted gets a new address).
    """
    client: Any = get_client()  # distributed is partly untyped
    sources = _sources(client, published, me)
    while True:
        if not sources:
            raise published._foreign(here, "no worker runs on a host with a copy")
        future = client.submit(
            function, published, workers=sources, pure=False, priority=_SOURCE_PRIORITY
        )
        try:
            while True:
                try:
                    result: _T = future.result(timeout=_SOURCE_CHECK_SECONDS)
                    return result
                except DaskTimeoutError:
                    now = _sources(client, published, me)
                    if not set(sources) & set(now):
                        sources = now  # every source left: ask others
                        break
        finally:
            client.cancel([future])


def _sources(client: Any, published: PublishedArray, me: str) -> list[str]:
    """The workers, other than ``me``, that run on a host with a copy of ``published``."""
    keys: dict[str, str] = client.run(_host_here, on_error="ignore")
    return sorted(
        address for address, key in keys.items() if key in published._copies and address != me
    )


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


def _rebuild_published(
    copies: _Copies, shape: tuple[int, ...], dtype: np.dtype[Any] | str, fortran: bool
) -> PublishedArray:
    return PublishedArray(copies, shape, _layout.dtype_of_token(dtype), fortran)


def publish(
    client: Client, array: npt.ArrayLike, *, timeout: float | None = None
) -> PublishedArray:
    """Place one read-only copy of ``array`` in shared memory on each host that runs workers.

    Hosts are told apart by the shared memory their processes see (`host_key`):
    two containers on one machine with separate ``/dev/shm`` are two hosts.  The
    copy for the client's own host is written by the client; each other host gets
    the array once over the network, into one of its workers, which writes it out
    and drops its private copy.  Every worker and nanny then holds its host's copy
    until it closes (see `SharedMemoryArrayPlugin`), so the copies survive
    ``client.restart()``.

    Parameters
    ----------
    client : distributed.Client
        A client of the cluster, with its workers started.
    array : array_like
        The data; any dtype without object fields.
    timeout : float, optional
        Seconds to wait for each remote host's copy.

    Returns
    -------
    PublishedArray
        Pass it to tasks; call ``.as_array()`` in them.  Release it with
        ``.release()`` or by using it as a context manager.

    Raises
    ------
    ValueError
        The cluster has no workers.
    UnsupportedDtypeError
        An object dtype; nothing was sent.
    OutOfSharedMemoryError
        A host cannot hold the copy; copies already made are released.
    """
    data = np.asarray(array)
    shape, dtype = _layout.normalize(data.shape, data.dtype)  # refuse object dtypes here
    fortran = _layout.is_fortran(data)
    register_plugins(client)
    keys: dict[str, str] = client.run(_enrol)
    if not keys:
        raise ValueError("the Dask cluster has no workers: start them (client.wait_for_workers)")
    workers: dict[str, list[str]] = {}
    for address, key in sorted(keys.items()):
        workers.setdefault(key, []).append(address)
    # Names are chosen here, so that a copy whose maker never answers is still released.
    names = {key: _names.generate() for key in workers}
    copies: dict[str, tuple[str, Identity]] = {}
    try:
        here = host_key()
        if here in workers:
            copies[here] = _hostcopy.create(data, fortran, names[here])
        remote = {key: addresses[0] for key, addresses in workers.items() if key != here}
        copies.update(_copy_to_hosts(client, data, fortran, remote, names, timeout))
        joined = client.run(_join_on_host, copies, on_error="return")
        client.run(_join_on_host, copies, nanny=True, on_error="ignore")
        lost = set(copies) - set(joined.values())
        if lost:
            raise ReleasedError(
                f"the copies for hosts {sorted(lost)} were freed during publish(): every "
                "worker of those hosts left",
                segment=copies[min(lost)][0],
            )
    except BaseException:
        _release_everywhere(client, {key: (names[key], None) for key in names})
        raise
    return PublishedArray(copies, shape, dtype, fortran, client)


def _copy_to_hosts(
    client: Any,
    data: np.ndarray[Any, Any],
    fortran: bool,
    targets: dict[str, str],
    names: dict[str, str],
    timeout: float | None,
) -> dict[str, tuple[str, Identity]]:
    """Send ``data`` to one worker of each host in ``targets`` (host key -> address),
    which writes that host's copy; return the copies made."""
    if not targets:
        return {}
    scattered = client.scatter(data, workers=list(targets.values()), broadcast=True, hash=False)
    made = {
        key: client.submit(
            _hostcopy.create, scattered, fortran, names[key], workers=[address], pure=False
        )
        for key, address in targets.items()
    }
    try:
        return {key: future.result(timeout=timeout) for key, future in made.items()}
    finally:
        # Forget the workers' private copies now, even while an exception from here
        # keeps this frame alive.
        client.cancel([scattered, *made.values()])


def _enrol(dask_worker: Any) -> str:
    _hostcopy.enrol(id(dask_worker))
    return host_key()


def _join_on_host(copies: _Copies) -> str | None:
    """Hold this host's copy; return this host's key if it has one to hold."""
    here = host_key()
    copy = copies.get(here)
    return here if copy is not None and _hostcopy.join(*copy) else None


def _release_on_host(copies: Mapping[str, tuple[str, Identity | None]]) -> None:
    here = host_key()
    name, identity = copies.get(here) or (_late_name(copies, here), None)
    _hostcopy.release(name, identity)
    if here not in copies:
        _hostcopy.drop_claim(name)


def _release_everywhere(client: Client, copies: Mapping[str, tuple[str, Identity | None]]) -> None:
    try:
        # A worker lost meanwhile is no reason to stop: any worker of a host unlinks
        # that host's copy.
        client.run(_release_on_host, copies, on_error="ignore")
        # Again, now that every host with a copy has released it: a host added
        # later that linked its copy meanwhile either finds its source released,
        # or had linked it before this round (see PublishedArray._late_copy).
        client.run(_release_on_host, copies, on_error="ignore")
        client.run(_release_on_host, copies, nanny=True, on_error="ignore")
    finally:
        _release_on_host(copies)  # this process's host, if its workers already left
