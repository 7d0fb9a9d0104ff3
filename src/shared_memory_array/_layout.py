"""Array layouts: normalising shape and dtype, and the header a segment describes itself with.

A segment made by this library starts with a fixed binary header, the shape, and
a description of the dtype; the array bytes follow at a page-aligned offset.  All
integers are little-endian.  Format 2::

    offset 0   magic b"\\x93SMARRAY"                           8 bytes
               format version (uint16)                         2
               flags (uint16; bit 0: Fortran order)            2
               number of dimensions, n (uint32)                4
               length of the dtype description, m (uint32)     4
               offset of the data, D (uint64)                  8
               size of the data in bytes (uint64)              8
               pid of the creating process (uint32)            4
               pid of the process that will unlink it (uint32) 4
               the creator's PID namespace (uint64; the inode
               of /proc/<pid>/ns/pid, 0 if unknown)            8
    offset 52  the shape (n x uint64)                          8n
               the dtype: ``dtype.str`` in ASCII for plain dtypes
               (``'<f8'``, ``'>M8[ns]'``), else the repr of
               ``numpy.lib.format.dtype_to_descr(dtype)`` in UTF-8
               (keeps fields, titles, padding and byte order)  m
    offset D   the array, D a multiple of 4096

Format 1, written by releases before the namespace was recorded, lacks the
namespace field: its shape starts at offset 44.  Both are read; only format 2 is
written.

Segments made by others have no header; they are attached with an explicit
shape and dtype, and their data starts at offset 0.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import struct
import sys
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, Union

import numpy as np
import numpy.lib.format as npformat

from ._errors import LayoutError, UnsupportedDtypeError
from ._namespace import pid_namespace

MAGIC = b"\x93SMARRAY"
FORMAT_VERSION = 2
DATA_ALIGNMENT = 4096
_START = struct.Struct("<8sH")  # magic and format version: the same in every format
# The fixed part of each format's header, by version; a format only appends fields.
_FIXED = {1: struct.Struct("<8sHHIIQQII"), 2: struct.Struct("<8sHHIIQQIIQ")}
_FORTRAN = 1
_MAX_DIMS = 32  # NumPy 1.x arrays have at most 32 dimensions (2.x: 64)
_MAX_DESCRIPTION = 1 << 20

ShapeLike = Union[int, Sequence[int]]

# Where the keeper's pid lies, in headers of every format (see `encode`): a segment
# handed to another process (`SharedMemoryArray.transfer`) records its new keeper.
KEEPER_OFFSET = struct.calcsize("<8sHHIIQQI")
_KEEPER = struct.Struct("<I")


def keeper_field(pid: int) -> bytes:
    """The header bytes at `KEEPER_OFFSET` that name ``pid`` as a segment's keeper."""
    return _KEEPER.pack(pid)


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
        """The array over a mapped segment; NumPy keeps it inside the segment's bounds
        (``TypeError`` if it does not fit)."""
        if self.dtype.subdtype is not None:  # NumPy would add its shape to the array's
            raise ValueError(f"a subarray dtype ({self.dtype}) belongs in the shape")
        order: Literal["C", "F"] = "F" if self.fortran else "C"
        # Positional arguments: np.ndarray parses keywords slowly, and attach is hot.
        return np.ndarray(self.shape, self.dtype, segment, self.offset, None, order)


class Region(NamedTuple):
    """A strided part of an array: offset in bytes from the array's first byte."""

    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    def fits(self, nbytes: int, itemsize: int) -> bool:
        """Whether every element of the region lies within an array's ``nbytes`` bytes.

        Computed with Python integers: NumPy's own check computes the region's
        extent in ``intp``, which huge strides overflow (shape ``(5,)`` with stride
        ``2**62`` passes it, and reading the array then crashes).  An empty region
        fits if its offset is within ``[0, nbytes]``.  The offset, the dimensions
        and the strides must also be integers that ``intp`` holds.

        Parameters
        ----------
        nbytes
            Size of the array's data in bytes.
        itemsize
            Size of one element in bytes.
        """
        try:
            offset = operator.index(self.offset)
            shape = [operator.index(dim) for dim in self.shape]
            strides = [operator.index(stride) for stride in self.strides]
        except TypeError:  # a tampered pickle can hold anything
            return False
        if len(shape) != len(strides) or any(dim < 0 for dim in shape):
            return False
        if not all(_INTP_MIN <= value <= _INTP_MAX for value in (offset, *shape, *strides)):
            return False
        if 0 in shape:
            return 0 <= offset <= nbytes
        spans = [(dim - 1) * stride for dim, stride in zip(shape, strides)]
        low = offset + sum(span for span in spans if span < 0)
        high = offset + sum(span for span in spans if span > 0) + itemsize
        return low >= 0 and high <= nbytes


_INTP_MAX = int(np.iinfo(np.intp).max)
_INTP_MIN = int(np.iinfo(np.intp).min)


def count(shape: tuple[int, ...]) -> int:
    """Number of elements of an array of this shape."""
    return math.prod(shape)


def normalize_dtype(dtype: Any, segment: str | None = None) -> np.dtype[Any]:
    """Return ``np.dtype(dtype)`` if it can live in shared memory.

    Refused: object fields, a zero item size, and what the header cannot describe
    for another process: metadata (h5py's enum and string dtypes carry some) and
    structured fields out of offset order or overlapping.
    """
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
    problem = _undescribable(result)
    if problem is not None:
        raise UnsupportedDtypeError(f"dtype {result} {problem}", segment=segment)
    return result


def _undescribable(dtype: np.dtype[Any], field: str = "") -> str | None:
    """Why the header cannot describe ``dtype`` to another process; None if it can."""
    where = f" (in field {field!r})" if field else ""
    if dtype.metadata:
        return (
            f"carries metadata{where}, as h5py's enum dtypes do, which the header cannot "
            "pass on to other processes: share array.view(stripped) instead, with "
            "stripped = np.dtype(dtype.str) for a plain dtype, or for a structured one "
            "numpy.lib.format.descr_to_dtype(numpy.lib.format.dtype_to_descr(dtype)) "
            "(NumPy warns that this drops the metadata)"
        )
    if dtype.subdtype is not None:
        return _undescribable(dtype.subdtype[0], field)
    if dtype.names is None or dtype.fields is None:
        return None
    end = 0
    for name in dtype.names:  # not dtype.fields: it lists fields by title too
        path = f"{field}.{name}" if field else name
        field_dtype, offset = dtype.fields[name][:2]
        # The header lists fields as NumPy's dtype.descr does: in order, padding between.
        if offset < end:
            return (
                f"has field {path!r} at byte {offset}, before the end of the field listed "
                f"ahead of it (byte {end}): expected fields in offset order without "
                "overlaps, as the header describes them; reorder the fields, or copy the "
                "array into such a dtype"
            )
        end = offset + field_dtype.itemsize
        problem = _undescribable(field_dtype, path)
        if problem is not None:
            return problem
    return None


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
    """The header's text for a dtype `normalize_dtype` accepted."""
    if dtype.names is None and dtype.subdtype is None:
        return dtype.str.encode("ascii")  # e.g. '<f8', '|S5', '<M8[ns]'
    return repr(npformat.dtype_to_descr(dtype)).encode("utf-8")


@functools.lru_cache(maxsize=256)
def _parse_dtype(text: str | bytes) -> np.dtype[Any]:
    """Read a dtype description (a header's, or a pickle's token); each is parsed
    once per process (``literal_eval`` is slow, and unpickling a handle is hot)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if text[:1] in ("[", "("):
        dtype: np.dtype[Any] = npformat.descr_to_dtype(ast.literal_eval(text))
        return dtype
    return np.dtype(text)


@functools.lru_cache(maxsize=256)
def _header_dtype(text: bytes) -> np.dtype[Any]:
    """A header's dtype, parsed and checked once per process (attach is hot)."""
    return normalize_dtype(_parse_dtype(text))


def dtype_token(dtype: np.dtype[Any]) -> np.dtype[Any] | str:
    """What a pickle carries for ``dtype``: its string when that says it all."""
    # Pickling a dtype object costs about 4 us, its string far less.
    return dtype.str if dtype.names is None and not dtype.metadata else dtype


def dtype_of_token(token: np.dtype[Any] | str) -> np.dtype[Any]:
    """The dtype a `dtype_token` stands for."""
    return _parse_dtype(token) if isinstance(token, str) else np.dtype(token)


def is_fortran(array: np.ndarray[Any, Any]) -> bool:
    """Whether ``array`` is laid out in Fortran order (and not also in C order)."""
    return array.ndim > 1 and array.flags.f_contiguous and not array.flags.c_contiguous


def encode(
    shape: tuple[int, ...], dtype: np.dtype[Any], fortran: bool, creator: int, keeper: int
) -> tuple[bytes, int]:
    """Return ``(header bytes, data offset)`` describing an array, in the current format.

    ``creator`` is the pid of the process that made the segment, ``keeper`` the pid
    of the process responsible for unlinking it (the creator, or a manager's
    server); the command line's ``clean`` reads them, with this process's PID
    namespace, recorded too.
    """
    description = _describe_dtype(dtype)
    fixed = _FIXED[FORMAT_VERSION]
    end = fixed.size + 8 * len(shape) + len(description)
    offset = -(-end // DATA_ALIGNMENT) * DATA_ALIGNMENT
    start = fixed.pack(
        MAGIC,
        FORMAT_VERSION,
        _FORTRAN if fortran else 0,
        len(shape),
        len(description),
        offset,
        count(shape) * dtype.itemsize,
        creator,
        keeper,
        pid_namespace(),
    )
    return start + struct.pack(f"<{len(shape)}Q", *shape) + description, offset


# The fields every format shares: up to the lengths a reader needs first, and up
# to the data's size.
_LENGTHS = struct.Struct("<8sHHII")  # magic, version, flags, ndim, description length
_SIZES = struct.Struct("<8sHHIIQQ")  # ..., data offset, data size
_SHAPES = [struct.Struct(f"<{ndim}Q") for ndim in range(_MAX_DIMS + 1)]


def _fixed(head: bytes) -> tuple[int, ...] | None:
    """The fixed part of a header, as ``(version, flags, ndim, length, offset, nbytes,
    creator, keeper, pid_namespace, size of the fixed part)``; None if ``head`` starts none.

    For a format this version does not know, only the version is read (the rest is
    zeros), for `decode` to refuse.  Format 1 has no namespace: 0.
    """
    if head[:8] != MAGIC or len(head) < _START.size:
        return None
    version = _START.unpack_from(head)[1]
    fixed = _FIXED.get(version)
    if fixed is None:
        return (version, 0, 0, 0, 0, 0, 0, 0, 0, _START.size)
    if len(head) < fixed.size:
        return None
    fields = fixed.unpack_from(head)
    return (*fields[1:], *((0,) if version == 1 else ()), fixed.size)


def header_length(head: bytes) -> int:
    """Bytes a segment's header takes, judged from its first bytes; 0 if it has none.

    A first read of a few hundred bytes is enough unless the dtype has a very long
    description; then read this many and decode again.
    """
    if len(head) < _LENGTHS.size:
        return 0
    magic: bytes
    version: int
    ndim: int
    length: int
    magic, version, _, ndim, length = _LENGTHS.unpack_from(head)
    if magic != MAGIC:
        return 0
    fixed = _FIXED.get(version)
    if fixed is None:
        return _START.size  # a format unknown here: enough for decode to refuse it
    if len(head) < fixed.size:
        return 0
    if ndim > _MAX_DIMS:  # corrupt: enough for decode to say so
        ndim = _MAX_DIMS + 1
    if length > _MAX_DESCRIPTION:
        length = _MAX_DESCRIPTION + 1
    return fixed.size + 8 * ndim + length


class Origin(NamedTuple):
    """Who made a segment, from its header."""

    creator: int  # pid of the process that made it
    keeper: int  # pid of the process that will unlink it
    pid_namespace: int  # the creator's PID namespace (see _namespace); 0 if unknown


def origin(head: bytes) -> Origin:
    """Return who made a segment, from its header (see `encode`).

    ``pid_namespace`` is 0 for format 1 headers, which do not record it; all three
    are 0 if ``head`` starts no header.
    """
    fixed = _fixed(head)
    if fixed is None:
        return Origin(0, 0, 0)
    return Origin(*fixed[6:9])


def _corrupt(name: str, problem: str) -> LayoutError:
    return LayoutError(f"segment {name!r} has a corrupt header: {problem}", segment=name)


def decode(head: bytes, size: int, name: str) -> Layout | None:
    """Read and check a segment's header; ``None`` if it has none (a raw segment).

    Headers of every format up to `FORMAT_VERSION` are read.  The result depends
    on ``head`` and ``size`` alone (``name`` only goes into error messages), so a
    layout read once is remembered: segments of one shape from one creator, or
    the same segment attached again, are not parsed again (attach is hot).

    Parameters
    ----------
    head
        The segment's first bytes, at least `header_length` of them.
    size
        The segment's size in bytes.
    name
        The segment's name, for error messages.

    Raises
    ------
    LayoutError
        The header is corrupt, or in a format newer than this version reads.
    """
    key = (head, size)
    layout = _decoded.get(key)
    if layout is None:
        layout = _decode(head, size, name)
        if layout is not None:
            if len(_decoded) >= _DECODED_ENTRIES:
                _decoded.clear()
            _decoded[key] = layout
    return layout


_decoded: dict[tuple[bytes, int], Layout] = {}
_DECODED_ENTRIES = 64


def _decode(head: bytes, size: int, name: str) -> Layout | None:
    if len(head) < _START.size:
        return None
    magic, version = _START.unpack_from(head)
    if magic != MAGIC:
        return None
    fixed = _FIXED.get(version)
    if fixed is None:
        if version > FORMAT_VERSION:
            raise LayoutError(
                f"segment {name!r} was made by a newer shared-memory-array (format {version}); "
                f"this version reads format {FORMAT_VERSION} and older",
                segment=name,
            )
        raise _corrupt(name, f"unknown format {version}")
    if len(head) < fixed.size:
        return None
    _, _, flags, ndim, length, offset, nbytes = _SIZES.unpack_from(head)
    end = fixed.size + 8 * ndim + length
    if ndim > _MAX_DIMS or length > _MAX_DESCRIPTION or end > offset or end > size:
        raise _corrupt(
            name, f"{ndim} dimensions and a {length}-byte dtype do not fit before the data"
        )
    if offset + nbytes > size:
        raise _corrupt(
            name,
            f"data of {nbytes} bytes at offset {offset} runs past the segment end ({size} bytes)",
        )
    if end > len(head):
        raise _corrupt(name, f"header of {end} bytes is longer than the {len(head)} bytes read")
    shape = _SHAPES[ndim].unpack_from(head, fixed.size)
    text = head[end - length : end]
    try:
        dtype = _header_dtype(text)
    except UnsupportedDtypeError as exc:
        raise UnsupportedDtypeError(str(exc), segment=name) from None
    except Exception as exc:  # literal_eval and np.dtype raise many types
        raise _corrupt(name, f"unreadable dtype {text[:200]!r} ({exc})") from None
    if count(shape) * dtype.itemsize != nbytes:
        raise _corrupt(name, f"shape {shape} and dtype {dtype} do not add up to {nbytes} bytes")
    return Layout(shape, dtype, bool(flags & _FORTRAN), offset)
