"""Named shared memory on Windows, through ``multiprocessing.shared_memory`` (untested).

Windows has no unlink: a named mapping lives while any process has it open, so the
segment disappears when the owner and every attached handle and array are gone, and
`unlink` has nothing to do.  Its pages are committed when the mapping is created, so
a lack of memory shows as an error there, never as a fault on a later write.
"""

from __future__ import annotations

from collections.abc import Iterable
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from . import _layout
from ._errors import SegmentExistsError, SegmentNotFoundError

SHM_DIR = "(Windows named mappings)"

Bytes = np.ndarray[Any, np.dtype[np.uint8]]
Identity = tuple[int, int, int]


def identity(name: str) -> Identity | None:
    """Always ``None``: a cached mapping would keep a Windows segment alive forever."""
    del name
    return None


def _take_mapping(shm: shared_memory.SharedMemory) -> Bytes:
    # Hand the mmap to NumPy: its buffer export keeps the mapping alive exactly as
    # long as some array uses it.  The stdlib's own memoryview must go first, or
    # the mapping could never be closed.
    mapping: Any = shm._mmap  # type: ignore[attr-defined]
    shm._buf.release()  # type: ignore[attr-defined]
    shm._buf = None  # type: ignore[attr-defined]
    shm._mmap = None  # type: ignore[attr-defined]
    return np.frombuffer(mapping, dtype=np.uint8)


def directory_state() -> None:
    return None


def free_bytes() -> int | None:
    return None


def create(
    name: str, size: int, chunks: Iterable[tuple[int, Bytes]] = (), *, filled: bool = False
) -> tuple[Bytes, Identity | None]:
    del filled  # pages are committed at creation either way
    try:
        shm = shared_memory.SharedMemory(name, create=True, size=size)
    except FileExistsError:
        raise SegmentExistsError(
            f"shared memory segment {name!r} already exists", segment=name
        ) from None
    segment = _take_mapping(shm)
    for offset, data in chunks:
        segment[offset : offset + data.size] = data
    return segment, None


def open_existing(name: str, *, writable: bool = True) -> tuple[Bytes, Identity | None, bytes]:
    try:
        shm = shared_memory.SharedMemory(name)
    except FileNotFoundError:
        raise SegmentNotFoundError(
            f"no shared memory segment named {name!r} (never created, or already released)",
            segment=name,
        ) from None
    segment = _take_mapping(shm)
    if not writable:  # the mapping itself is writable here: NumPy guards it
        segment.flags.writeable = False
    head = bytes(segment[: _layout.DATA_ALIGNMENT])
    needed = _layout.header_length(head)
    return segment, None, bytes(segment[:needed]) if needed > len(head) else head


def unlink(name: str) -> bool:
    del name
    return False
