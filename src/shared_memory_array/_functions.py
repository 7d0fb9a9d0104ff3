"""Shortcuts for the common case: one process owns the array, workers get the handle."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._array import Backend, Order, SharedMemoryArray
from ._layout import ShapeLike

__all__ = ["empty", "share", "zeros"]


def share(
    data: npt.ArrayLike,
    *,
    manager: object = None,
    name: str | None = None,
    backend: Backend | None = None,
) -> SharedMemoryArray[Any]:
    """Copy ``data`` into shared memory and return the owner handle.

    Shorthand for ``SharedMemoryArray.copy(manager, data, name=name)``: the copy is
    written in blocks, with no full temporary copy, and on Linux appears under
    its name only once complete.

    Parameters
    ----------
    data : array_like
        An array, contiguous or not, or anything ``numpy.asarray`` takes.
    manager : multiprocessing.managers.SharedMemoryManager or None, default None
        ``None`` for the returned handle to own the segment alone, or a started
        ``SharedMemoryManager`` that unlinks it at shutdown (see
        `SharedMemoryArray.allocate`).
    name : str, optional
        Name of the new segment (rules in `SharedMemoryArray.allocate`); by
        default a fresh ``sma_<pid>_<16 hex digits>``.
    backend : {'auto', 'named', 'memfd'}, optional
        The kind of segment (see `SharedMemoryArray.allocate`).

    Returns
    -------
    SharedMemoryArray
        The owner handle: use it as a context manager to unlink the segment when
        done.

    Raises
    ------
    TypeError
        ``manager`` is neither ``None`` nor a ``SharedMemoryManager``.
    SharedMemoryArrayError
        ``manager`` is not running (never started, or shut down).
    InvalidNameError
        ``name`` is not a valid segment name.
    SegmentExistsError
        A segment called ``name`` exists already; it is left untouched.
    LayoutError
        ``data`` has more than 32 dimensions.
    UnsupportedDtypeError
        ``data``'s dtype cannot be shared (see `SharedMemoryArray.allocate`).
    OutOfSharedMemoryError
        ``/dev/shm`` cannot hold the segment, or has no inode left for it.
        Nothing is left behind.

    Examples
    --------
    >>> import numpy as np
    >>> import shared_memory_array as sma
    >>> with sma.share(np.arange(4)) as shared:
    ...     shared.as_array().tolist()
    [0, 1, 2, 3]
    """
    return SharedMemoryArray.copy(manager, data, name=name, backend=backend)


def zeros(
    shape: ShapeLike,
    dtype: npt.DTypeLike = np.float64,
    *,
    order: Order = "C",
    manager: object = None,
    name: str | None = None,
    backend: Backend | None = None,
) -> SharedMemoryArray[Any]:
    """Return the owner handle of a new zero-filled shared array, like ``numpy.zeros``.

    Shorthand for
    ``SharedMemoryArray.allocate(manager, shape, dtype, order=order, name=name)``.

    Parameters
    ----------
    shape : int or sequence of int
        Shape of the array (rules in `SharedMemoryArray.allocate`).
    dtype : str or numpy.dtype, default numpy.float64
        Anything ``numpy.dtype()`` accepts, without Python objects.
    order : 'C' or 'F', default 'C'
        Memory layout: row-major (C) or column-major (Fortran).
    manager : multiprocessing.managers.SharedMemoryManager or None, default None
        ``None`` for the returned handle to own the segment alone, or a started
        ``SharedMemoryManager`` that unlinks it at shutdown (see
        `SharedMemoryArray.allocate`).
    name : str, optional
        Name of the new segment (rules in `SharedMemoryArray.allocate`); by
        default a fresh ``sma_<pid>_<16 hex digits>``.
    backend : {'auto', 'named', 'memfd'}, optional
        The kind of segment (see `SharedMemoryArray.allocate`).

    Returns
    -------
    SharedMemoryArray
        The owner handle: use it as a context manager to unlink the segment when
        done.

    Raises
    ------
    TypeError
        ``manager`` is neither ``None`` nor a ``SharedMemoryManager``.
    SharedMemoryArrayError
        ``manager`` is not running (never started, or shut down).
    InvalidNameError
        ``name`` is not a valid segment name.
    SegmentExistsError
        A segment called ``name`` exists already; it is left untouched.
    LayoutError
        Invalid ``shape`` or ``order``.
    UnsupportedDtypeError
        ``dtype`` cannot be shared (see `SharedMemoryArray.allocate`).
    OutOfSharedMemoryError
        ``/dev/shm`` cannot hold the segment, or has no inode left for it.
        Nothing is left behind.

    Examples
    --------
    >>> import shared_memory_array as sma
    >>> with sma.zeros((2, 3), "int16") as out:
    ...     out.shape, str(out.dtype), out.owner, int(out.as_array().sum())
    ((2, 3), 'int16', True, 0)
    """
    return SharedMemoryArray.allocate(
        manager, shape, dtype, order=order, name=name, backend=backend
    )


def empty(
    shape: ShapeLike,
    dtype: npt.DTypeLike = np.float64,
    *,
    order: Order = "C",
    manager: object = None,
    name: str | None = None,
    backend: Backend | None = None,
) -> SharedMemoryArray[Any]:
    """Return the owner handle of a new shared array, like ``numpy.empty``.

    The same as `zeros`, and so zero-filled: fresh shared memory comes
    zero-filled from the kernel, and reserving it up front (so a full ``/dev/shm``
    cannot crash a later write) is what costs, so there is nothing to save by
    leaving it uninitialised.

    Parameters
    ----------
    shape : int or sequence of int
        Shape of the array (rules in `SharedMemoryArray.allocate`).
    dtype : str or numpy.dtype, default numpy.float64
        Anything ``numpy.dtype()`` accepts, without Python objects.
    order : 'C' or 'F', default 'C'
        Memory layout: row-major (C) or column-major (Fortran).
    manager : multiprocessing.managers.SharedMemoryManager or None, default None
        ``None`` for the returned handle to own the segment alone, or a started
        ``SharedMemoryManager`` that unlinks it at shutdown (see
        `SharedMemoryArray.allocate`).
    name : str, optional
        Name of the new segment (rules in `SharedMemoryArray.allocate`); by
        default a fresh ``sma_<pid>_<16 hex digits>``.
    backend : {'auto', 'named', 'memfd'}, optional
        The kind of segment (see `SharedMemoryArray.allocate`).

    Returns
    -------
    SharedMemoryArray
        The owner handle: use it as a context manager to unlink the segment when
        done.

    Raises
    ------
    TypeError
        ``manager`` is neither ``None`` nor a ``SharedMemoryManager``.
    SharedMemoryArrayError
        ``manager`` is not running (never started, or shut down).
    InvalidNameError
        ``name`` is not a valid segment name.
    SegmentExistsError
        A segment called ``name`` exists already; it is left untouched.
    LayoutError
        Invalid ``shape`` or ``order``.
    UnsupportedDtypeError
        ``dtype`` cannot be shared (see `SharedMemoryArray.allocate`).
    OutOfSharedMemoryError
        ``/dev/shm`` cannot hold the segment, or has no inode left for it.
        Nothing is left behind.
    """
    return SharedMemoryArray.allocate(
        manager, shape, dtype, order=order, name=name, backend=backend
    )
