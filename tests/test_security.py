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
    UntrustedSegmentError,
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
    packed = shared.__reduce__()[1][0]  # the arguments of _rebuild, pickled
    fields = dict(zip(("name", "shape", "dtype", "fortran"), pickle.loads(packed)))
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
        header = shared._mapped[:80]
        shape_at = 52  # after the fixed part of format 2
        dtype_at = shape_at + 8  # after the shape
        assert bytes(header[dtype_at : dtype_at + 3]) == b"<f8"
        header[dtype_at : dtype_at + 3] = np.frombuffer(b"gar", np.uint8)
        release_cached_mappings()  # read the header again, not this process's copy
        with pytest.raises(LayoutError, match="corrupt header"):
            SharedMemoryArray.attach(shared.name)
        header[8] = 99  # a format version from the future
        with pytest.raises(LayoutError, match="newer"):
            SharedMemoryArray.attach(shared.name)
        header[shape_at] = 5  # a shape that does not add up
        header[8] = 2
        header[dtype_at : dtype_at + 3] = np.frombuffer(b"<f8", np.uint8)
        with pytest.raises(LayoutError, match="do not add up"):
            SharedMemoryArray.attach(shared.name)


@pytest.mark.parametrize("plant", ["fifo", "symlink", "directory"])
def test_attach_refuses_what_is_not_a_regular_file_without_blocking(plant):
    name = helpers.raw_name()
    path = f"/dev/shm/{name}"
    {"fifo": os.mkfifo, "directory": os.mkdir}.get(plant, lambda p: os.symlink("/etc/passwd", p))(
        path
    )
    try:
        for readonly in (True, False):
            with pytest.raises(SegmentNotFoundError, match=f"{name}.*not a shared memory segment"):
                SharedMemoryArray.attach(name, (4,), "u1", readonly=readonly)
    finally:
        (os.rmdir if plant == "directory" else os.unlink)(path)


def test_attach_refuses_a_segment_of_another_user_or_writable_by_others():
    raw = shared_memory.SharedMemory(helpers.raw_name(), create=True, size=64)
    path = f"/dev/shm/{raw.name}"
    try:
        os.chmod(path, 0o666)  # as a planted file would be
        with pytest.raises(UntrustedSegmentError, match=f"{raw.name}.*mode 0666") as caught:
            SharedMemoryArray.attach(raw.name, (8,), "f8", readonly=True)
        assert isinstance(caught.value, PermissionError)
        assert pickle.loads(pickle.dumps(caught.value)).segment == raw.name
        os.chmod(path, 0o600)
        if os.geteuid() == 0:
            os.chown(path, 65534, -1)
            with pytest.raises(UntrustedSegmentError, match="owned by user 65534"):
                SharedMemoryArray.attach_unsafe(raw.name, (8,), "f8")
        handle = SharedMemoryArray.attach(raw.name, (8,), "f8", allow_untrusted=True)
        assert handle.as_array().shape == (8,)
        handle.close()
    finally:
        raw.close()
        raw.unlink()


@pytest.mark.parametrize("bad", ["\0", "{}\0b", "{}/b", "..", "."])
def test_unsafe_twins_skip_normalisation_never_safety(bad):
    with SharedMemoryArray.allocate(None, 1) as fine:
        name = bad.format(fine.name)
        for make in (
            lambda: SharedMemoryArray.allocate_unsafe(None, (2,), "f8", name=name),
            lambda: SharedMemoryArray.attach_unsafe(name, (1,), "f8"),
        ):
            with pytest.raises(InvalidNameError):
                make()
        SharedMemoryArray.attach(fine.name).close()  # the cache is not poisoned


def test_a_region_whose_strides_overflow_is_refused_not_a_crash():
    with SharedMemoryArray.allocate(None, 5, "u1") as shared:
        tampered = _array._rebuild(shared.name, (5,), "|u1", False, (0, (5,), (2**62,)))
        with pytest.raises(LayoutError, match="does not fit"):
            tampered.as_array()


def test_index_arrays_are_refused_when_indexing_not_at_use():
    """NumPy reads even a 0-d index array as fancy indexing, which copies."""
    with SharedMemoryArray.copy(None, np.arange(20.0).reshape(5, 4)) as shared:
        assert shared[np.int64(1), np.intp(3)].as_array() == 7.0
        for index in (np.array(2), np.array([1, 2]), (1, np.array(3))):
            with pytest.raises(TypeError, match="basic indexing"):
                shared[index]
        with pytest.raises(TypeError, match="basic indexing"):
            shared[np.True_]


def test_unsafe_attach_of_a_raw_segment_refuses_object_dtypes():
    raw = shared_memory.SharedMemory(helpers.raw_name(), create=True, size=64)
    try:
        with pytest.raises(UnsupportedDtypeError, match="Python objects"):
            SharedMemoryArray.attach_unsafe(raw.name, 2, object)
    finally:
        raw.close()
        raw.unlink()
