"""The public surface: names, properties, constructors, context managers, NumPy protocol."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import shared_memory_array
from shared_memory_array import (
    LayoutError,
    SegmentExistsError,
    SegmentNotFoundError,
    SharedArray,
    SharedMemoryArray,
    SharedMemoryManager,
    UnsupportedDtypeError,
)


def test_all_is_pinned():
    assert sorted(shared_memory_array.__all__) == [
        "ClosedHandleError",
        "ForeignHostError",
        "FrozenSegmentError",
        "InvalidNameError",
        "LayoutError",
        "LockTimeoutError",
        "NotOwnerError",
        "OutOfSharedMemoryError",
        "Pool",
        "ProcessPoolExecutor",
        "ReleasedError",
        "SegmentExistsError",
        "SegmentInfo",
        "SegmentLock",
        "SegmentNotFoundError",
        "SharedArray",
        "SharedMemoryArray",
        "SharedMemoryArrayError",
        "SharedMemoryManager",
        "UnsupportedDtypeError",
        "UntrustedSegmentError",
        "__version__",
        "clean_segments",
        "empty",
        "list_segments",
        "release_cached_mappings",
        "segment_info",
        "share",
        "zeros",
    ]
    for name in shared_memory_array.__all__:
        obj = getattr(shared_memory_array, name)
        if isinstance(obj, type):
            assert obj.__module__ == "shared_memory_array"


def test_shared_array_is_the_same_class():
    assert SharedArray is SharedMemoryArray


def test_class_is_not_called_directly():
    with pytest.raises(TypeError, match="allocate"):
        SharedMemoryArray()


def test_properties_describe_the_array():
    with SharedMemoryArray.allocate(None, (3, 4), "int16", order="F") as shared:
        assert shared.shape == (3, 4)
        assert shared.dtype == np.dtype("int16")
        assert (shared.ndim, shared.size, shared.nbytes) == (2, 12, 24)
        assert shared.owner and not shared.closed
        assert shared.name.startswith("sma_")
        array = shared.as_array()
        assert array.flags.f_contiguous and not array.flags.owndata
        assert isinstance(array, np.ndarray) and type(array) is np.ndarray
    assert shared.closed and not shared.owner


def test_allocate_fills_with_zeros_and_accepts_an_int_shape():
    with SharedMemoryArray.allocate(None, 5) as shared:
        assert shared.as_array().tolist() == [0.0] * 5


def test_allocate_like_copies_shape_dtype_and_order_not_values():
    template = np.asfortranarray(np.ones((2, 3), dtype="u2"))
    with SharedMemoryArray.allocate_like(None, template) as shared:
        array = shared.as_array()
        assert array.shape == (2, 3) and array.dtype == "u2" and array.flags.f_contiguous
        assert not array.any()


def test_as_array_returns_views_of_the_same_memory():
    with SharedMemoryArray.allocate(None, 3) as shared:
        shared.as_array()[1] = 5
        assert shared.as_array()[1] == 5
        assert np.shares_memory(shared.as_array(), shared.as_array())


def test_asarray_shares_and_array_copies():
    with SharedMemoryArray.copy(None, np.arange(3.0)) as shared:
        assert np.shares_memory(np.asarray(shared), shared.as_array())
        copied = np.array(shared)
        assert not np.shares_memory(copied, shared.as_array())
        assert np.asarray(shared, dtype="f4").dtype == np.float32
        if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            with pytest.raises(ValueError, match="needs a copy"):
                np.asarray(shared, dtype="f4", copy=False)
            assert np.shares_memory(np.asarray(shared, copy=False), shared.as_array())


def test_handle_and_managed_are_context_managers():
    with SharedMemoryArray.allocate(None, 1) as shared:
        assert not shared.closed
    assert shared.closed
    other = SharedMemoryArray.allocate(None, 1)
    with other.managed() as same:
        assert same is other
    assert other.closed


def test_repr_shows_identity_never_data():
    with SharedMemoryArray.copy(None, np.full(3, 123456789)) as shared:
        text = repr(shared)
        assert shared.name in text and "shape=(3,)" in text and "owner=True" in text
        assert "123456789" not in text


def test_pickle_is_small_whatever_the_size():
    with (
        SharedMemoryArray.allocate(None, 10) as small,
        SharedMemoryArray.allocate(None, 10_000_000) as large,
    ):
        small_size, large_size = len(pickle.dumps(small)), len(pickle.dumps(large))
        assert small_size < 200 and large_size < 200
        assert large_size - small_size <= 8  # the one wider integer in the shape


def test_each_unpickling_of_a_handle_is_a_handle_of_its_own():
    # A process parses a pickled handle's fields once (a pool's worker gets the same
    # handle task after task): the handles it rebuilds from them stay apart.
    with SharedMemoryArray.copy(None, np.arange(4.0)) as shared:
        payload = pickle.dumps(shared[1:3])
        first, second = pickle.loads(payload), pickle.loads(payload)
        assert first is not second and not first.owner
        first.close()
        assert second.as_array().tolist() == [1.0, 2.0]
        assert pickle.loads(payload).as_array().tolist() == [1.0, 2.0]
        second.close()


def test_named_allocation_refuses_an_existing_name():
    with SharedMemoryArray.allocate(None, 2) as first:
        with pytest.raises(SegmentExistsError, match=first.name):
            SharedMemoryArray.allocate(None, 2, name=first.name)
        assert first.as_array().shape == (2,)


def test_attach_by_name_alone_reads_the_layout():
    data = np.arange(6, dtype=">i4").reshape(2, 3)
    with SharedMemoryArray.copy(None, data) as shared:
        client = SharedMemoryArray.attach(shared.name)
        assert client.shape == (2, 3) and client.dtype == np.dtype(">i4")
        np.testing.assert_array_equal(client.as_array(), data)
        same = SharedMemoryArray.attach(shared.name, (2, 3), ">i4", order="C")
        assert same.shape == (2, 3)
        client.close()
        same.close()


def test_attach_of_a_missing_segment_is_a_file_not_found_error():
    with pytest.raises(SegmentNotFoundError, match="sma_0_nothere") as info:
        SharedMemoryArray.attach("sma_0_nothere")
    assert isinstance(info.value, FileNotFoundError)


def test_manager_must_be_a_started_shared_memory_manager():
    with pytest.raises(TypeError, match="SharedMemoryManager"):
        SharedMemoryArray.allocate(object(), 3)
    manager = SharedMemoryManager()
    with pytest.raises(Exception, match="not running"):
        SharedMemoryArray.allocate(manager, 3)


@pytest.mark.parametrize(
    ("shape", "dtype", "error"),
    [
        ((-1, 3), "f8", LayoutError),
        ((2**40, 2**40), "f8", LayoutError),
        (("a",), "f8", LayoutError),
        ((3,), object, UnsupportedDtypeError),
        ((3,), [("a", "i4"), ("b", "O")], UnsupportedDtypeError),
        ((3,), "S", UnsupportedDtypeError),
    ],
)
def test_invalid_shapes_and_dtypes_are_refused(shape, dtype, error):
    with pytest.raises(error):
        SharedMemoryArray.allocate(None, shape, dtype)


def test_copy_refuses_object_arrays():
    with pytest.raises(UnsupportedDtypeError, match="object"):
        SharedMemoryArray.copy(None, np.array([1, "a"], dtype=object))
    assert isinstance(UnsupportedDtypeError("x"), TypeError)


def test_subarray_dtypes_fold_into_the_shape():
    with SharedMemoryArray.allocate(None, 2, ("f4", (3,))) as shared:
        assert shared.shape == (2, 3) and shared.dtype == np.float32


def test_unsafe_twins_give_the_same_arrays():
    data = np.arange(12.0).reshape(3, 4)
    with (
        SharedMemoryArray.copy_unsafe(None, data) as copied,
        SharedMemoryArray.allocate_unsafe(None, (3, 4), "f8") as allocated,
        SharedMemoryArray.allocate_like_unsafe(None, data) as like,
    ):
        np.testing.assert_array_equal(copied.as_array(), data)
        assert allocated.shape == like.shape == (3, 4)
        client = SharedMemoryArray.attach_unsafe(copied.name)
        np.testing.assert_array_equal(client.as_array(), data)
        client.close()


def test_unsafe_attach_with_a_wrong_shape_stays_in_bounds():
    with SharedMemoryArray.allocate(None, 4) as shared:
        client = SharedMemoryArray.attach_unsafe(shared.name)
        assert client.as_array().size == 4
        client.close()


def test_typing_subscript_works_at_runtime():
    alias = SharedMemoryArray[np.float64]
    assert alias.__origin__ is SharedMemoryArray


def test_share_zeros_and_empty_return_owner_handles():
    import shared_memory_array as sma

    with sma.share(np.arange(3)) as shared:
        assert shared.owner and shared.as_array().tolist() == [0, 1, 2]
    for make in (sma.zeros, sma.empty):
        with make((2, 3), "i2", order="F") as shared:
            array = shared.as_array()
            assert shared.owner and array.dtype == np.int16 and array.flags.f_contiguous
            assert not array.any()
    with SharedMemoryManager() as manager:
        shared = sma.zeros(4, manager=manager)
        assert shared.owner and shared.shape == (4,)


def test_one_dimensional_arrays_have_one_layout_whatever_the_order():
    with SharedMemoryArray.allocate(None, 5, order="F") as shared:
        for order in ("C", "F"):
            assert SharedMemoryArray.attach(shared.name, order=order).shape == (5,)
        with pytest.raises(LayoutError):
            SharedMemoryArray.attach(shared.name, order="K")


def test_attach_accepts_the_subarray_dtype_allocate_accepted():
    with SharedMemoryArray.allocate(None, 3, ("f8", (2,))) as shared:
        assert SharedMemoryArray.attach(shared.name, 3, ("f8", (2,))).shape == (3, 2)


class _PickledBefore:
    """Pickles as a handle of the previous release did: ``_rebuild`` and its arguments."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return shared_memory_array._rebuild, self.args


def test_handles_pickled_by_the_previous_release_still_load():
    with SharedMemoryArray.copy(None, np.arange(4.0)) as shared:
        st = os.stat(f"/dev/shm/{shared.name}")
        identity = (st.st_dev, st.st_ino, st.st_size)
        for args in (  # with identity and host key; and before they were sent
            (shared.name, (4,), "<f8", False, None, identity, False, "somewhere:0"),
            (shared.name, (4,), "<f8", False),
        ):
            payload = pickle.dumps(_PickledBefore(*args))
            assert b"_rebuild" in payload  # found by name, as that release's were
            handle = pickle.loads(payload)
            assert handle.as_array().tolist() == [0.0, 1.0, 2.0, 3.0]
            assert pickle.loads(pickle.dumps(handle)).as_array().sum() == 6.0
