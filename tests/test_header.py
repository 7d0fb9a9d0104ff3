"""The segment header: format 2 records the creator's PID namespace, format 1 is still read."""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from collections.abc import Iterator

import numpy as np
import pytest

import helpers
from shared_memory_array import (
    LayoutError,
    SharedMemoryArray,
    list_segments,
    release_cached_mappings,
    segment_info,
)
from shared_memory_array._layout import Origin, decode, encode, header_length, origin
from shared_memory_array._namespace import pid_namespace

MAGIC = b"\x93SMARRAY"
# Written out here rather than taken from _layout: these are the formats on disk.
FORMAT_1 = struct.Struct("<8sHHIIQQII")
FORMAT_2 = struct.Struct("<8sHHIIQQIIQ")

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /dev/shm by hand"
)


def format_1(shape: tuple[int, ...], dtype: bytes, nbytes: int, creator: int, keeper: int) -> bytes:
    """A header as the previous release wrote it, its data at offset 4096."""
    fixed = FORMAT_1.pack(MAGIC, 1, 0, len(shape), len(dtype), 4096, nbytes, creator, keeper)
    return fixed + struct.pack(f"<{len(shape)}Q", *shape) + dtype


@contextlib.contextmanager
def handmade(content: bytes) -> Iterator[str]:
    """A segment written byte by byte, not by the library; unlinked at the end."""
    name = helpers.raw_name()
    path = f"/dev/shm/{name}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    try:
        yield name
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def test_a_header_is_format_2_and_records_the_creators_pid_namespace():
    header, offset = encode((2, 3), np.dtype("<i4"), False, 100, 200)
    fields = FORMAT_2.unpack_from(header)
    assert fields == (MAGIC, 2, 0, 2, 3, offset, 24, 100, 200, pid_namespace())
    assert struct.unpack_from("<2Q", header, FORMAT_2.size) == (2, 3)
    assert header[FORMAT_2.size + 16 :] == b"<i4"
    assert header_length(header) == len(header) == FORMAT_2.size + 16 + 3
    assert origin(header) == Origin(100, 200, pid_namespace())
    assert decode(header, offset + 24, "x") == ((2, 3), np.dtype("<i4"), False, 4096)


@linux_only
def test_a_segment_says_which_pid_namespace_made_it():
    with SharedMemoryArray.allocate(None, 3) as shared:
        with open(f"/dev/shm/{shared.name}", "rb") as segment:
            head = segment.read(4096)
        assert origin(head) == Origin(os.getpid(), os.getpid(), pid_namespace())
        assert segment_info(shared.name).pid_namespace == pid_namespace() != 0


def test_format_1_headers_of_the_previous_release_are_still_read():
    header = format_1((2, 3), b"<i4", 24, 100, 200)
    assert header_length(header) == len(header) == 44 + 16 + 3
    assert origin(header) == Origin(100, 200, 0)
    assert decode(header, 4096 + 24, "x") == ((2, 3), np.dtype("<i4"), False, 4096)
    structured = repr([("a", "<i4"), ("b", "|S3")]).encode()
    header = format_1((4,), structured, 28, 1, 1)
    assert decode(header, 4096 + 28, "x") == (
        (4,),
        np.dtype([("a", "<i4"), ("b", "S3")]),
        False,
        4096,
    )


@linux_only
def test_a_format_1_segment_attaches_and_is_listed():
    data = np.arange(6, dtype="<i4").reshape(2, 3)
    me = os.getpid()  # alive: no `clean` running meanwhile may take it
    header = format_1((2, 3), b"<i4", 24, me, me)
    with handmade(header.ljust(4096, b"\0") + data.tobytes()) as name:
        attached = SharedMemoryArray.attach(name)
        np.testing.assert_array_equal(attached.as_array(), data)
        attached.close()
        release_cached_mappings()
        (info,) = [info for info in list_segments() if info.name == name]
        assert (info.shape, info.dtype, info.creator_pid, info.keeper_pid) == (
            (2, 3),
            "int32",
            me,
            me,
        )
        assert info.pid_namespace == 0 and not info.draft


def test_a_newer_format_is_refused_naming_the_segment_and_both_versions():
    header = bytearray(encode((3,), np.dtype("<f8"), False, 1, 1)[0])
    header[8:10] = struct.pack("<H", 3)
    assert header_length(bytes(header)) > 0  # it is a header, of a format unknown here
    with pytest.raises(LayoutError) as caught:
        decode(bytes(header), 4096 + 24, "sma_from_the_future")
    message = str(caught.value)
    assert "'sma_from_the_future'" in message and caught.value.segment == "sma_from_the_future"
    assert "newer" in message and "format 3" in message and "format 2" in message


@linux_only
def test_a_segment_of_a_newer_format_is_refused_by_attach_and_left_out_of_list():
    header = bytearray(encode((3,), np.dtype("<f8"), False, 1, 1)[0])
    header[8:10] = struct.pack("<H", 3)
    with handmade(bytes(header).ljust(4096 + 24, b"\0")) as name:
        with pytest.raises(LayoutError, match=f"{name}.*format 3.*format 2"):
            SharedMemoryArray.attach(name)
        assert name not in [info.name for info in list_segments()]


def test_format_0_is_a_corrupt_header():
    header = bytearray(encode((3,), np.dtype("<f8"), False, 1, 1)[0])
    header[8:10] = b"\0\0"
    with pytest.raises(LayoutError, match="corrupt header: unknown format 0"):
        decode(bytes(header), 4096 + 24, "x")


def test_bytes_too_short_for_their_formats_fixed_part_are_no_header():
    header = encode((3,), np.dtype("<f8"), False, 1, 1)[0]
    for short in (header[:9], header[: FORMAT_2.size - 1], format_1((3,), b"<f8", 24, 1, 1)[:43]):
        assert header_length(short) == 0
        assert decode(short, 4096 + 24, "x") is None
        assert origin(short) == Origin(0, 0, 0)
