"""Array layouts: normalising shape and dtype, and the header a segment describes itself with.

A segment made by this library starts with a fixed binary header, then a text
description of the array, then (at a page-aligned offset) the array bytes::

    offset 0   magic  b"\\x93SMARRAY"                     8 bytes
               format version (little-endian uint16)      2
               flags (bit 0: Fortran order)               2
               length of the description (uint32)         4
               offset of the data (uint64)                8
               size of the data in bytes (uint64)         8
    offset 32  description: repr of {'descr': ..., 'shape': ...}, where
               'descr' is ``numpy.lib.format.dtype_to_descr(dtype)`` (keeps
               structured fields, padding and byte order, unlike ``dtype.str``),
               UTF-8 (field names may be any string)
    offset D   the array, D a multiple of 4096

Segments made by others have no header; they are attached with an explicit
shape and dtype, and their data starts at offset 0.
"""

from __future__ import annotations

import ast
import operator
import struct
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple, Union

import numpy as np
import numpy.lib.format as npformat

from ._errors import LayoutError, UnsupportedDtypeError

MAGIC = b"\x93SMARRAY"
FORMAT_VERSION = 1
DATA_ALIGNMENT = 4096
_FIXED = struct.Struct("<8sHHIQQ")
_FORTRAN = 1
_MAX_DESCRIPTION = 1 << 20

ShapeLike = Union[int, Sequence[int]]


class Layout(NamedTuple):
    """Where an array lives in a segment and how to read it."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran: bool
    offset: int

    @property
    def size(self) -> int:
        return count(self.shape)

    @property
    def nbytes(self) -> int:
        return count(self.shape) * self.dtype.itemsize


class Region(NamedTuple):
    """A strided part of an array: offset in bytes from the array's first byte."""

    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def count(shape: tuple[int, ...]) -> int:
    """Number of elements of an array of this shape."""
    count = 1
    for dim in shape:
        count *= dim
    return count


def normalize_dtype(dtype: Any, segment: str | None = None) -> np.dtype[Any]:
    """Return ``np.dtype(dtype)`` if it can live in shared memory."""
    result: np.dtype[Any] = np.dtype(dtype)
    if result.hasobject:
        raise UnsupportedDtypeError(
            f"dtype {result} holds Python objects, whose pointers mean nothing in another "
            "process: expected a dtype without object fields",
            segment=segment,
        )
    if result.itemsize == 0:
        raise UnsupportedDtypeError(
            f"expected a dtype with a nonzero item size (got {result}); give string "
            "dtypes a length, e.g. 'S8' or 'U8'",
            segment=segment,
        )
    return result


def normalize(
    shape: ShapeLike, dtype: Any, segment: str | None = None
) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Return a validated ``(shape, dtype)``.

    Each dimension goes through ``operator.index``; negative dimensions, sizes that
    overflow ``intp`` and object dtypes are rejected.  A subarray dtype such as
    ``('f8', (3,))`` is folded into the shape, as NumPy does.
    """
    dt = normalize_dtype(dtype, segment)
    try:
        dims: tuple[int, ...] = (operator.index(shape),)  # type: ignore[arg-type]
    except TypeError:
        try:
            dims = tuple(operator.index(dim) for dim in shape)  # type: ignore[union-attr]
        except TypeError:
            raise LayoutError(
                f"expected a shape of integers (got {shape!r})", segment=segment
            ) from None
    if dt.subdtype is not None:
        dims += dt.shape
        dt = normalize_dtype(dt.base, segment)
    if any(dim < 0 for dim in dims):
        raise LayoutError(f"expected non-negative dimensions (got shape {dims})", segment=segment)
    if len(dims) > 64:
        raise LayoutError(f"expected at most 64 dimensions (got {len(dims)})", segment=segment)
    if count(dims) * dt.itemsize > sys.maxsize:
        raise LayoutError(
            f"array of shape {dims} and dtype {dt} is larger than this platform can address",
            segment=segment,
        )
    return dims, dt


def encode(shape: tuple[int, ...], dtype: np.dtype[Any], fortran: bool) -> tuple[bytes, int]:
    """Return ``(header bytes, data offset)`` describing an array."""
    description = repr({"descr": npformat.dtype_to_descr(dtype), "shape": shape}).encode("utf-8")
    offset = -(-(_FIXED.size + len(description)) // DATA_ALIGNMENT) * DATA_ALIGNMENT
    nbytes = count(shape) * dtype.itemsize
    fixed = _FIXED.pack(
        MAGIC, FORMAT_VERSION, _FORTRAN if fortran else 0, len(description), offset, nbytes
    )
    return fixed + description, offset


def has_header(segment_bytes: np.ndarray[Any, np.dtype[np.uint8]]) -> bool:
    """Return whether a mapped segment starts with this library's magic."""
    return segment_bytes.size >= _FIXED.size and segment_bytes[:8].tobytes() == MAGIC


def decode(segment_bytes: np.ndarray[Any, np.dtype[np.uint8]], name: str) -> Layout:
    """Read and check the header of a mapped segment that `has_header`."""
    size = segment_bytes.size
    _, version, flags, length, offset, nbytes = _FIXED.unpack(
        segment_bytes[: _FIXED.size].tobytes()
    )

    def corrupt(problem: str) -> LayoutError:
        return LayoutError(f"segment {name!r} has a corrupt header: {problem}", segment=name)

    if version > FORMAT_VERSION:
        raise LayoutError(
            f"segment {name!r} was made by a newer shared-memory-array (format {version}); "
            f"this version reads format {FORMAT_VERSION} and older",
            segment=name,
        )
    if length > _MAX_DESCRIPTION or _FIXED.size + length > min(offset, size):
        raise corrupt(f"description of {length} bytes does not fit before offset {offset}")
    if offset + nbytes > size:
        raise corrupt(
            f"data of {nbytes} bytes at offset {offset} runs past the segment end ({size} bytes)"
        )
    text = segment_bytes[_FIXED.size : _FIXED.size + length].tobytes()
    try:
        meta = ast.literal_eval(text.decode("utf-8"))
        dtype = npformat.descr_to_dtype(meta["descr"])
        shape = tuple(meta["shape"])
    except Exception as exc:  # literal_eval and descr_to_dtype raise many types
        raise corrupt(f"unreadable description {text[:200]!r} ({exc})") from None
    if not all(isinstance(dim, int) for dim in shape):
        raise corrupt(f"shape {shape!r} is not a tuple of integers")
    shape, dtype = normalize(shape, dtype, name)
    if count(shape) * dtype.itemsize != nbytes:
        raise corrupt(f"shape {shape} and dtype {dtype} do not add up to {nbytes} bytes")
    return Layout(shape, dtype, bool(flags & _FORTRAN), offset)
