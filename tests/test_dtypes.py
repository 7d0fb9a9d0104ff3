"""Round trips of every kind of array: dtypes, shapes, orders and non-contiguous sources."""

from __future__ import annotations

import pickle

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shared_memory_array import SharedMemoryArray

DTYPES = st.one_of(
    hnp.scalar_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
    hnp.byte_string_dtypes(min_len=1),
    hnp.unicode_string_dtypes(min_len=1),
    hnp.nested_dtypes(max_itemsize=64),
)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def arrays():
    return hnp.arrays(DTYPES, SHAPES, elements={"allow_nan": False})


def assert_same(shared: np.ndarray, expected: np.ndarray) -> None:
    assert shared.dtype == expected.dtype
    assert shared.shape == expected.shape
    np.testing.assert_array_equal(shared, expected)


@SETTINGS
@given(arrays(), st.booleans())
def test_copy_attach_and_unpickle_round_trip(data, fortran):
    if fortran:
        data = np.asfortranarray(data)
    with SharedMemoryArray.copy(None, data) as shared:
        assert_same(shared.as_array(), data)
        attached = SharedMemoryArray.attach(shared.name)
        assert_same(attached.as_array(), data)
        assert attached.as_array().flags.f_contiguous == data.flags.f_contiguous
        unpickled = pickle.loads(pickle.dumps(shared))
        assert_same(unpickled.as_array(), data)
        attached.close()
        unpickled.close()


@SETTINGS
@given(DTYPES, SHAPES, st.sampled_from("CF"))
def test_allocate_gives_zeroed_arrays_of_any_layout(dtype, shape, order):
    with SharedMemoryArray.allocate(None, shape, dtype, order=order) as shared:
        array = shared.as_array()
        assert array.shape == shape and array.dtype == dtype
        assert not any(array.tobytes())
        if order == "F" and array.ndim > 1:
            assert array.flags.f_contiguous


@SETTINGS
@given(hnp.arrays(np.int32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=8)), st.data())
def test_copy_of_non_contiguous_views_gives_equal_values(data, draw):
    slices = tuple(
        slice(None, None, draw.draw(st.sampled_from([1, 2, -1, -2, 3]))) for _ in data.shape
    )
    for view in (data[slices], data.T, data[slices].T, data[..., ::-1]):
        with SharedMemoryArray.copy(None, view) as shared:
            assert_same(shared.as_array(), view)


def test_copy_of_a_broadcast_array_gives_equal_values():
    view = np.broadcast_to(np.arange(5.0), (4, 5))
    with SharedMemoryArray.copy(None, view) as shared:
        assert_same(shared.as_array(), view)
        assert shared.as_array().flags.writeable


def test_copy_of_a_large_non_contiguous_array_goes_in_blocks():
    data = np.arange(3 * 1024 * 1024, dtype=np.float64).reshape(-1, 1024)[::-3, ::2]
    with SharedMemoryArray.copy(None, data) as shared:
        assert_same(shared.as_array(), data)


def test_zero_dimensional_and_empty_arrays():
    for data in (np.array(3.5), np.zeros((0, 3)), np.zeros((2, 0), order="F"), np.array("hi")):
        with SharedMemoryArray.copy(None, data) as shared:
            assert_same(SharedMemoryArray.attach(shared.name).as_array(), data)
