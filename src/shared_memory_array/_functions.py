"""Shortcuts for the common case: one process owns the array, workers get the handle."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._array import Order, SharedMemoryArray
from ._layout import ShapeLike

__all__ = ["empty", "share", "zeros"]


def share(
    data: npt.ArrayLike, *, manager: object = None, name: str | None = None
) -> SharedMemoryArray[Any]:
    """Copy ``data`` into shared memory and return the owner handle.

    Shorthand for ``SharedMemoryArray.copy(manager, data)``; use the handle as a
    context manager to unlink the segment when done.

    Examples
    --------
    >>> import numpy as np
    >>> import shared_memory_array as sma
    >>> with sma.share(np.arange(4)) as shared:
    ...     shared.as_array().tolist()
    [0, 1, 2, 3]
    """
    return SharedMemoryArray.copy(manager, data, name=name)


def zeros(
    shape: ShapeLike,
    dtype: npt.DTypeLike = np.float64,
    *,
    order: Order = "C",
    manager: object = None,
    name: str | None = None,
) -> SharedMemoryArray[Any]:
    """Return the owner handle of a new zero-filled shared array, like ``numpy.zeros``.

    Shorthand for ``SharedMemoryArray.allocate(manager, shape, dtype, order=order)``.
    """
    return SharedMemoryArray.allocate(manager, shape, dtype, order=order, name=name)


def empty(
    shape: ShapeLike,
    dtype: npt.DTypeLike = np.float64,
    *,
    order: Order = "C",
    manager: object = None,
    name: str | None = None,
) -> SharedMemoryArray[Any]:
    """Return the owner handle of a new shared array, like ``numpy.empty``.

    The same as `zeros`: fresh shared memory comes zero-filled from the kernel,
    and reserving it up front (so a full ``/dev/shm`` cannot crash a later write)
    is what costs, so there is nothing to save by leaving it uninitialised.
    """
    return SharedMemoryArray.allocate(manager, shape, dtype, order=order, name=name)
