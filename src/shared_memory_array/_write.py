"""Writing a new self-describing segment: its header, then the array in blocks.

Used by every constructor (`SharedMemoryArray.allocate`, ``copy``, ...) and by the
Dask host copies, so a segment is laid out and written in one place.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _cache, _layout, _segment
from ._layout import Layout
from ._segment import Bytes

# Non-contiguous sources are copied into the segment in blocks of about this
# size, so copy() never makes a full temporary of the array.
_COPY_BLOCK_BYTES = 1 << 24


def _blocks(array: np.ndarray[Any, Any], fortran: bool) -> Iterator[tuple[int, Bytes]]:
    """Yield ``(offset, bytes)`` pieces of ``array`` laid out in C or Fortran order.

    A non-contiguous array is copied in pieces of at most about `_COPY_BLOCK_BYTES`,
    however its dimensions fall: a (1, 2**27) strided array too.
    """
    if fortran:  # the Fortran-order bytes of a are the C-order bytes of a.T
        array = array.T
    if array.flags.c_contiguous:
        yield 0, array.reshape(-1).view(np.uint8)
        return
    offset = 0
    for piece in _pieces_of(array):
        block = np.ascontiguousarray(piece)
        yield offset, block.reshape(-1).view(np.uint8)
        offset += block.nbytes


def _pieces_of(array: np.ndarray[Any, Any]) -> Iterator[np.ndarray[Any, Any]]:
    """Split ``array`` into parts of at most `_COPY_BLOCK_BYTES`, in C order."""
    if array.nbytes <= _COPY_BLOCK_BYTES or array.ndim == 0:
        yield array
        return
    row_bytes = array[0].nbytes if array.shape[0] else 0
    if row_bytes > _COPY_BLOCK_BYTES and array.ndim > 1:
        for row in array:
            yield from _pieces_of(row)
        return
    rows = max(1, _COPY_BLOCK_BYTES // max(1, row_bytes))
    for start in range(0, array.shape[0], rows):
        yield array[start : start + rows]


def _pieces(
    header: bytes, offset: int, source: np.ndarray[Any, Any] | None, fortran: bool
) -> Iterator[tuple[int, Bytes]]:
    """Yield what a new segment holds: the header, then the source's bytes if any."""
    yield 0, np.frombuffer(header, np.uint8)
    if source is not None:
        for at, block in _blocks(source, fortran):
            yield offset + at, block


def create(
    name: str | None,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    fortran: bool,
    source: np.ndarray[Any, Any] | None,
    *,
    keeper: int,
    backend: str | None = "named",
) -> tuple[str, _cache.Mapped]:
    """Make a segment holding an array of this layout, zeros or ``source``'s values;
    return its name and mapping.

    ``name``: a named segment of that name; None: a fresh segment of the kind
    ``backend`` asks for (see `_segment.choose`).  ``keeper`` is the pid of the
    process that will unlink it (recorded in the header for ``clean``); the
    creator is this process.  Call inside `_interrupts.deferred` where a Ctrl-C
    must not leak it.
    """
    header, offset = _layout.encode(shape, dtype, fortran, os.getpid(), keeper)
    layout = Layout(shape, dtype, fortran, offset)
    size = offset + layout.nbytes
    return _cache.create(
        name,
        size,
        _pieces(header, offset, source, fortran),
        layout,
        filled=source is not None,
        backend=_segment.NAMED if name is not None else _segment.choose(backend, size),
    )
