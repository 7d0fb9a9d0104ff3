"""Round trips of every kind of array: dtypes, shapes, orders and non-contiguous sources."""

from __future__ import annotations

import pickle

import numpy as np
import numpy.lib.format as npformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import helpers
from shared_memory_array import SharedMemoryArray, UnsupportedDtypeError

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


ENUM = np.dtype(np.int32, metadata={"enum": {"red": 0, "green": 1}})  # as h5py makes them


@pytest.mark.parametrize(
    ("dtype", "where"),
    [
        (ENUM, ""),
        (np.dtype([("colour", ENUM), ("x", "f8")]), " (in field 'colour')"),
        (np.dtype([("outer", [("colour", ENUM, (2,))])]), " (in field 'outer.colour')"),
    ],
    ids=["plain", "field", "nested subarray field"],
)
def test_dtypes_with_metadata_are_refused_with_a_way_out(dtype, where):
    data = np.zeros(3, dtype)
    for make in (
        lambda: SharedMemoryArray.allocate(None, 3, dtype),
        lambda: SharedMemoryArray.copy(None, data),
    ):
        with pytest.raises(UnsupportedDtypeError) as caught:
            make()
        message = str(caught.value)
        assert f"carries metadata{where}" in message
        assert "np.dtype(dtype.str)" in message and "descr_to_dtype(" in message
    if dtype.names is None:
        stripped = np.dtype(dtype.str)
    else:  # as the message says
        with pytest.warns(UserWarning, match="metadata"):
            stripped = npformat.descr_to_dtype(npformat.dtype_to_descr(dtype))
    with SharedMemoryArray.copy(None, data.view(stripped)) as shared:
        assert_same(SharedMemoryArray.attach(shared.name).as_array(), data.view(stripped))


@pytest.mark.parametrize(
    ("offsets", "field", "at", "end"),
    [([4, 0], "b", 0, 8), ([0, 2], "b", 2, 4)],
    ids=["out of order", "overlapping"],
)
def test_structured_dtypes_whose_fields_the_header_cannot_list_are_refused(offsets, field, at, end):
    dtype = np.dtype({"names": ["a", "b"], "formats": ["<i4", "<i4"], "offsets": offsets})
    nested = np.dtype([("x", "u1"), ("inner", dtype)])
    for refused, path in ((dtype, field), (nested, f"inner.{field}")):
        with pytest.raises(
            UnsupportedDtypeError, match="expected fields in offset order"
        ) as caught:
            SharedMemoryArray.allocate(None, 3, refused)
        assert f"field {path!r} at byte {at}, before the end of the field" in str(caught.value)
        assert f"(byte {end})" in str(caught.value)


@pytest.mark.parametrize(
    "dtype",
    [
        np.dtype({"names": ["a", "b"], "formats": ["<i4", ">f8"], "offsets": [0, 8]}),
        np.dtype({"names": ["a", "b"], "formats": ["<i4", "<i4"], "titles": ["A", "B"]}),
        np.dtype([("a", "u1"), ("b", "<i8")], align=True),
    ],
    ids=["gap", "titles", "aligned"],
)
def test_structured_dtypes_with_gaps_or_titles_reach_another_process(dtype):
    data = np.zeros(4, dtype)
    data["a"] = [1, 2, 3, 4]
    with SharedMemoryArray.copy(None, data) as shared:
        result = helpers.run_python(
            """
            import sys
            from shared_memory_array import SharedMemoryArray
            attached = SharedMemoryArray.attach(sys.argv[1])
            print(repr(attached.dtype.descr), attached.as_array()["a"].tolist())
            attached.close()
            """,
            shared.name,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("]", 1)[0] + "]" == repr(dtype.descr)
    assert result.stdout.strip().endswith("[1, 2, 3, 4]")
