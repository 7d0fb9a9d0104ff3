"""Array layouts: normalising shape and dtype, and the header a segment describes itself with.

A segment made by this library starts with a fixed binary header, the shape, and
a description of the dtype; the array bytes follow at a page-aligned offset.  All
integers are little-endian::

    offset 0   magic b"\\x93SMARRAY"                           8 bytes
               format version (uint16)                         2
               flags (uint16; bit 0: Fortran order)            2
               number of dimensions, n (uint32)                4
               length of the dtype description, m (uint32)     4
               offset of the data, D (uint64)                  8
               size of the data in bytes (uint64)              8
               pid of the creating process (uint32)            4
               pid of the process that will unlink it (uint32) 4
    offset 44  the shape (n x uint64)                          8n
               the dtype: ``dtype.str`` in ASCII for plain dtypes
               (``'<f8'``, ``'>M8[ns]'``), else the repr of
               ``numpy.lib.format.dtype_to_descr(dtype)`` in UTF-8
               (keeps fields, titles, padding and byte order)  m
    offset D   the array, D a multiple of 4096

Segments made by others have no header; they are attached with an explicit
shape and dtype, and their data starts at offset 0.
"""

from __future__ import annotations

import ast
import functools
import operator
import struct
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple, Union

import numpy as np
import numpy.lib.format as npformat

from ._errors import LayoutError, UnsupportedDtypeError

MAGIC = b"\x93SMARRAY"
FORMAT_VERSION = 1
DATA_ALIGNMENT = 4096
_FIXED = struct.Struct("<8sHHIIQQII")
_FORTRAN = 1
_MAX_DIMS = 32  # NumPy 1.x arrays have at most 32 dimensions (2.x: 64)
_MAX_DESCRIPTION = 1 << 20

ShapeLike = Union[int, Sequence[int]]


class Layout(NamedTuple):
    """Where an array lives in a segment and how to read it."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran: bool
    offset: int

    @property
    def nbytes(self) -> int:
        return count(self.shape) * self.dtype.itemsize

    def view(self, segment: np.ndarray[Any, np.dtype[np.uint8]]) -> np.ndarray[Any, Any]:
        """The array over a mapped segment; NumPy keeps it inside the segment's bounds."""
        data = segment[self.offset : self.offset + self.nbytes]
        return data.view(self.dtype).reshape(self.shape, order="F" if self.fortran else "C")


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
    if any(dim < 0 or dim > sys.maxsize for dim in dims):
        raise LayoutError(f"expected non-negative dimensions (got shape {dims})", segment=segment)
    if len(dims) > _MAX_DIMS:
        raise LayoutError(
            f"expected at most {_MAX_DIMS} dimensions (got {len(dims)})", segment=segment
        )
    if count(dims) * dt.itemsize > sys.maxsize:
        raise LayoutError(
            f"array of shape {dims} and dtype {dt} is larger than this platform can address",
            segment=segment,
        )
    return dims, dt


def _describe_dtype(dtype: np.dtype[Any]) -> bytes:
    if dtype.names is None and dtype.subdtype is None and not dtype.metadata:
        return dtype.str.encode("ascii")  # e.g. '<f8', '|S5', '<M8[ns]'
    with warnings.catch_warnings():  # "metadata is not saved": it is not, by design
        warnings.simplefilter("ignore", UserWarning)
        return repr(npformat.dtype_to_descr(dtype)).encode("utf-8")


@functools.lru_cache(maxsize=256)
def _parse_dtype(text: bytes) -> np.dtype[Any]:
    """Read a dtype description; parsed once per process (``literal_eval`` is slow)."""
    if text[:1] in (b"[", b"("):
        descr = ast.literal_eval(text.decode("utf-8"))
        dtype: np.dtype[Any] = npformat.descr_to_dtype(descr)
        return dtype
    return np.dtype(text.decode("ascii"))


def encode(
    shape: tuple[int, ...], dtype: np.dtype[Any], fortran: bool, creator: int, keeper: int
) -> tuple[bytes, int]:
    """Return ``(header bytes, data offset)`` describing an array.

    ``creator`` is the pid of the process that made the segment, ``keeper`` the pid
    of the process responsible for unlinking it (the creator, or a manager's
    server); the command line's ``clean`` reads them.
    """
    description = _describe_dtype(dtype)
    end = _FIXED.size + 8 * len(shape) + len(description)
    offset = -(-end // DATA_ALIGNMENT) * DATA_ALIGNMENT
    fixed = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        _FORTRAN if fortran else 0,
        len(shape),
        len(description),
        offset,
        count(shape) * dtype.itemsize,
        creator,
        keeper,
    )
    return fixed + struct.pack(f"<{len(shape)}Q", *shape) + description, offset


def header_length(head: bytes) -> int:
    """Bytes a segment's header takes, judged from its first bytes; 0 if it has none.

    A first read of a few hundred bytes is enough unless the dtype has a very long
    description; then read this many and decode again.
    """
    if len(head) < _FIXED.size or head[:8] != MAGIC:
        return 0
    _, _, _, ndim, length, _, _, _, _ = _FIXED.unpack_from(head)
    return int(_FIXED.size + 8 * min(ndim, _MAX_DIMS + 1) + min(length, _MAX_DESCRIPTION + 1))


def origin(head: bytes) -> tuple[int, int]:
    """Return ``(creator pid, keeper pid)`` from a header (see `encode`)."""
    creator, keeper = _FIXED.unpack_from(head)[-2:]
    return creator, keeper


def decode(head: bytes, size: int, name: str) -> Layout | None:
    """Read and check a segment's header; ``None`` if it has none (a raw segment).

    Parameters
    ----------
    head
        The segment's first bytes, at least `header_length` of them.
    size
        The segment's size in bytes.
    """
    if len(head) < _FIXED.size or head[:8] != MAGIC:
        return None
    _, version, flags, ndim, length, offset, nbytes, _, _ = _FIXED.unpack_from(head)

    def corrupt(problem: str) -> LayoutError:
        return LayoutError(f"segment {name!r} has a corrupt header: {problem}", segment=name)

    if version > FORMAT_VERSION:
        raise LayoutError(
            f"segment {name!r} was made by a newer shared-memory-array (format {version}); "
            f"this version reads format {FORMAT_VERSION} and older",
            segment=name,
        )
    end = _FIXED.size + 8 * ndim + length
    if ndim > _MAX_DIMS or length > _MAX_DESCRIPTION or end > min(offset, size):
        raise corrupt(f"{ndim} dimensions and a {length}-byte dtype do not fit before the data")
    if offset + nbytes > size:
        raise corrupt(
            f"data of {nbytes} bytes at offset {offset} runs past the segment end ({size} bytes)"
        )
    if end > len(head):
        raise corrupt(f"header of {end} bytes is longer than the {len(head)} bytes read")
    shape = struct.unpack_from(f"<{ndim}Q", head, _FIXED.size)
    text = head[end - length : end]
    try:
        dtype = _parse_dtype(text)
    except Exception as exc:  # literal_eval and np.dtype raise many types
        raise corrupt(f"unreadable dtype {text[:200]!r} ({exc})") from None
    dtype = normalize_dtype(dtype, name)
    if count(shape) * dtype.itemsize != nbytes:
        raise corrupt(f"shape {shape} and dtype {dtype} do not add up to {nbytes} bytes")
    return Layout(shape, dtype, bool(flags & _FORTRAN), offset)
