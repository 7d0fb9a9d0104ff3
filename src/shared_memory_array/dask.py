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

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

try:
    from distributed import Client, get_client
except ImportError as exc:  # pragma: no cover - the extra is installed in tests
    raise ImportError(
        "shared_memory_array.dask needs Dask distributed: pip install 'shared-memory-array[dask]'"
    ) from exc

# The Dask layer: this module publishes, releases and is the published array;
# _dask_plugins makes workers and nannies hold their host's copies; _dask_fetch
# attaches this host's copy, or fetches one for a host that joined after publish().
from . import _hostcopy, _layout, _names
from ._array import SharedMemoryArray
from ._dask_fetch import Copies, attach, host_here, late_copy, late_name, view
from ._dask_plugins import SharedMemoryArrayPlugin, register_plugins
from ._errors import ReleasedError
from ._host import host_key
from ._segment import Identity

__all__ = ["PublishedArray", "SharedMemoryArrayPlugin", "host_key", "publish"]

# Reprs, docs and pickles name this module, wherever the plugin is defined.
SharedMemoryArrayPlugin.__module__ = __name__


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
        copies: Copies,
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
        here = host_here()
        copy = self._copies.get(here)
        if copy is None:  # a host that joined after publish()
            copy = late_copy(self._copies, self._shape, self._dtype, self._fortran, here)
        name, identity = copy
        # A new handle each time: the process's attach cache keeps the mapping, and
        # forgets it on release; a handle kept here would keep a released copy mapped
        # for as long as Dask keeps this object.
        return attach(name, identity, self._shape, self._dtype, self._fortran)

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
        return view(self.handle())

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


def _rebuild_published(
    copies: Copies, shape: tuple[int, ...], dtype: np.dtype[Any] | str, fortran: bool
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
        here = host_here()
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
    return host_here()


def _join_on_host(copies: Copies) -> str | None:
    """Hold this host's copy; return this host's key if it has one to hold."""
    here = host_here()
    copy = copies.get(here)
    return here if copy is not None and _hostcopy.join(*copy) else None


def _release_on_host(copies: Mapping[str, tuple[str, Identity | None]]) -> None:
    here = host_here()
    name, identity = copies.get(here) or (late_name(copies, here), None)
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
        # or had linked it before this round (see `_dask_fetch.late_copy`).
        client.run(_release_on_host, copies, on_error="ignore")
        client.run(_release_on_host, copies, nanny=True, on_error="ignore")
    finally:
        _release_on_host(copies)  # this process's host, if its workers already left
