"""Put the data of a `SharedMemoryArray` into Ray's object store.

Ray already keeps one copy of an object per node, in the node's shared memory
object store, and hands NumPy arrays to tasks as zero-copy, read-only views of
that copy.  `register` tells Ray to treat a handle as its array: ``ray.put(handle)``,
or a handle passed as a task argument (alone or inside a list, dict, ...), stores
the array's data in the object store, and what a task receives is a read-only
``numpy.ndarray``, on any node:

```python
import ray
import shared_memory_array.ray

ray.init(runtime_env={"worker_process_setup_hook": "shared_memory_array.ray.register"})
shared_memory_array.ray.register()
ref = ray.put(handle)                     # copies the data into the store
handle.close()                            # the store's copy does not need it
ray.get(total.remote(ref))                # total(array) gets a read-only ndarray
```

Without `register`, a handle pickles as usual, to its segment's name: tasks on the
machine that made it get a writable handle to the same memory, and tasks on other
nodes cannot open it.

Needs the ``ray`` extra (``pip install 'shared-memory-array[ray]'``).  See docs/ray.md.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import numpy.typing as npt

from ._array import SharedMemoryArray

__all__ = ["deregister", "register"]


def _ray_util() -> Any:
    """Import ``ray.util`` on first use, so this module imports without Ray."""
    try:
        return importlib.import_module("ray.util")
    except ImportError as exc:
        raise ImportError(
            "shared_memory_array.ray needs Ray: pip install 'shared-memory-array[ray]'"
        ) from exc


def _to_array(handle: SharedMemoryArray[Any]) -> npt.NDArray[Any]:
    """Ray's serializer for a handle: its array, which Ray stores out of band."""
    array = handle.as_array()
    # Pickle protocol 5 hands a C- or Fortran-contiguous array's buffer to Ray
    # without copying it; any other (a strided region) would be pickled in band and
    # come back as a writable copy in every task.
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        array = np.ascontiguousarray(array)
    return array


def _from_array(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Ray's deserializer: the array as unpickled, a view of the object store.

    Ray pickles this function by reference, so its import path
    (``shared_memory_array.ray._from_array``) must stay stable.
    """
    return array


def register() -> None:
    """Make Ray store a handle's data in its object store, and give tasks the array.

    After this call, in this process, ``ray.put(handle)`` and any task or actor call
    that takes a handle (alone or inside a list, dict, ...) copy the handle's array
    (or region) into Ray's object store, once, when they are called.  The handle
    may be closed right after: Ray no longer needs its segment.

    What a task, actor or ``ray.get`` receives is a ``numpy.ndarray``, not a
    handle: a read-only, zero-copy view of the copy in the object store of its
    node (Ray keeps one copy per node).  To modify it, copy it
    (``np.array(array)``).  A task written with ``np.asarray(arg)`` works both with
    and without registration.

    Registration is per process and lasts until `deregister`, across
    ``ray.init`` and ``ray.shutdown``; calling it again does nothing.  Reading needs
    no registration, but a worker that passes handles on (puts them, returns them
    or gives them to other tasks) needs its own: start Ray with
    ``runtime_env={"worker_process_setup_hook": "shared_memory_array.ray.register"}``.
    It may be called before or after ``ray.init``.

    Raises
    ------
    ImportError
        Ray is not installed (``pip install 'shared-memory-array[ray]'``).

    Examples
    --------
    >>> import numpy as np
    >>> import ray  # doctest: +SKIP
    >>> import shared_memory_array.ray
    >>> from shared_memory_array import SharedMemoryArray
    >>> shared_memory_array.ray.register()  # doctest: +SKIP
    >>> with SharedMemoryArray.copy(None, np.arange(4.0)) as shared:  # doctest: +SKIP
    ...     ref = ray.put(shared)
    >>> ray.get(ref)  # doctest: +SKIP
    array([0., 1., 2., 3.])
    """
    _ray_util().register_serializer(
        SharedMemoryArray, serializer=_to_array, deserializer=_from_array
    )


def deregister() -> None:
    """Undo `register` in this process: handles pickle to their segment's name again.

    Does nothing if `register` was not called.

    Raises
    ------
    ImportError
        Ray is not installed.
    """
    _ray_util().deregister_serializer(SharedMemoryArray)
