"""Names, permissions and untrusted metadata from pickles and attach calls."""

from __future__ import annotations

import os
import pickle
import re
import stat
from multiprocessing import shared_memory

import numpy as np
import pytest

import helpers
from shared_memory_array import (
    InvalidNameError,
    LayoutError,
    SegmentNotFoundError,
    SharedMemoryArray,
    UnsupportedDtypeError,
    _array,
    release_cached_mappings,
)


def test_segments_are_private_to_their_user():
    with SharedMemoryArray.allocate(None, 3) as shared:
        mode = os.stat(f"/dev/shm/{shared.name}").st_mode
        assert stat.S_IMODE(mode) == 0o600


def test_generated_names_are_random_carry_the_pid_and_fit_macos():
    with (
        SharedMemoryArray.allocate(None, 1) as first,
        SharedMemoryArray.allocate(None, 1) as second,
    ):
        for name in (first.name, second.name):
            match = re.fullmatch(r"sma_(\d+)_([0-9a-f]{16})", name)
            assert match and int(match.group(1)) == os.getpid()
            assert len(name) <= 30 and len(f"sma_{2**22}_{'0' * 16}") <= 30
        assert first.name != second.name


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "/sma", "bad\x00name", "..", ".hidden", "-x", "x" * 256, "sp ace", "ü", 42],
)
def test_bad_names_are_refused(name):
    with pytest.raises(InvalidNameError):
        SharedMemoryArray.attach(name)
    with pytest.raises((InvalidNameError, TypeError)):
        SharedMemoryArray.allocate(None, 1, name=name)


def _tampered(shared, **changes):
    fields = dict(zip(("name", "shape", "dtype", "fortran"), shared.__reduce__()[1]))
    fields.update(changes)
    return pickle.loads(pickle.dumps(_Rebuild(fields)))


class _Rebuild:
    """Pickles as a call to the handle's rebuild function with arbitrary fields."""

    def __init__(self, fields):
        self.fields = fields

    def __reduce__(self):
        fields = self.fields
        return (
            _array._rebuild,
            (fields["name"], fields["shape"], fields["dtype"], fields["fortran"]),
        )


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"shape": (10**6,)}, LayoutError),
        ({"shape": (-1,)}, LayoutError),
        ({"shape": (2**62, 2**62)}, LayoutError),
        ({"dtype": np.dtype("f4")}, LayoutError),
        ({"dtype": np.dtype(object)}, UnsupportedDtypeError),
        ({"fortran": True, "shape": (2, 2)}, LayoutError),
        ({"name": "bad/name"}, InvalidNameError),
        ({"name": "sma\x00x"}, InvalidNameError),
        ({"name": "sma_0_gone"}, SegmentNotFoundError),
    ],
)
def test_tampered_pickles_give_clear_errors_at_first_use(changes, error):
    with SharedMemoryArray.allocate(None, 4) as shared:
        handle = _tampered(shared, **changes)  # unpickling itself never fails
        with pytest.raises(error):
            handle.as_array()
        assert os.path.exists(f"/dev/shm/{shared.name}")


def test_raw_segment_attach_checks_size_and_dtype():
    raw = shared_memory.SharedMemory(helpers.raw_name(), create=True, size=80)
    try:
        client = SharedMemoryArray.attach(raw.name, (10,), "f8")
        client.as_array()[:] = 1.5
        assert np.frombuffer(raw.buf, "f8", count=10).sum() == 15.0
        client.close()
        with pytest.raises(LayoutError):
            SharedMemoryArray.attach(raw.name, (11,), "f8")
        with pytest.raises(UnsupportedDtypeError):
            SharedMemoryArray.attach(raw.name, (10,), object)
    finally:
        raw.close()
        raw.unlink()


def test_corrupt_header_is_a_clear_error():
    with SharedMemoryArray.allocate(None, 4) as shared:
        header = shared._mapped[:64]
        assert bytes(header[52:55]) == b"<f8"  # after 44 fixed bytes and the shape
        header[52:55] = np.frombuffer(b"gar", np.uint8)
        release_cached_mappings()  # read the header again, not this process's copy
        with pytest.raises(LayoutError, match="corrupt header"):
            SharedMemoryArray.attach(shared.name)
        header[8] = 99  # a format version from the future
        with pytest.raises(LayoutError, match="newer"):
            SharedMemoryArray.attach(shared.name)
        header[44] = 5  # a shape that does not add up
        header[8] = 1
        header[52:55] = np.frombuffer(b"<f8", np.uint8)
        with pytest.raises(LayoutError, match="do not add up"):
            SharedMemoryArray.attach(shared.name)
