"""Region handles: basic slicing of a handle gives a handle to that part, pickled by reference."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from helpers import fill_region
from shared_memory_array import LayoutError, SharedMemoryArray, _array

KEYS = [
    np.s_[2:5],
    np.s_[:, ::2],
    np.s_[::-1],
    np.s_[3],
    np.s_[1, 2],
    np.s_[..., 1],
    np.s_[None, 1:3, -2:],
    np.s_[::-2, ::-3],
    np.s_[np.int64(2)],
    np.s_[5:2],
]


@pytest.mark.parametrize("key", KEYS, ids=repr)
@pytest.mark.parametrize("order", ["C", "F"])
def test_region_views_the_same_memory_as_the_slice(key, order):
    data = np.asarray(np.arange(48.0).reshape(6, 8), order=order)
    with SharedMemoryArray.copy(None, data) as shared:
        region = shared[key]
        expected = shared.as_array()[key]
        array = region.as_array()
        np.testing.assert_array_equal(array, expected)
        assert region.shape == np.shape(expected) and region.nbytes == np.asarray(expected).nbytes
        if array.size:
            assert np.shares_memory(array, shared.as_array())
        again = pickle.loads(pickle.dumps(region))
        np.testing.assert_array_equal(again.as_array(), expected)
        assert not region.owner and not again.owner
        region.close()
        again.close()


def test_region_of_a_region():
    with SharedMemoryArray.copy(None, np.arange(100).reshape(10, 10)) as shared:
        inner = shared[2:8, ::2][1:, -1]
        np.testing.assert_array_equal(inner.as_array(), shared.as_array()[2:8, ::2][1:, -1])
        np.testing.assert_array_equal(
            pickle.loads(pickle.dumps(inner)).as_array(), [38, 48, 58, 68, 78]
        )


def test_region_pickles_as_small_as_a_handle():
    with SharedMemoryArray.allocate(None, (1000, 1000)) as shared:
        assert len(pickle.dumps(shared[100:200, ::2])) < 250


def test_workers_write_their_tiles_through_region_handles(context):
    with SharedMemoryArray.allocate(None, (4, 6), "i4") as shared:
        with ProcessPoolExecutor(2, mp_context=context) as pool:
            futures = [pool.submit(fill_region, shared[row], row + 1) for row in range(4)]
            for future in futures:
                future.result(timeout=60)
        assert shared.as_array().tolist() == [[row + 1] * 6 for row in range(4)]


def test_closing_a_region_keeps_the_owner_and_segment():
    with SharedMemoryArray.allocate(None, 10) as shared:
        region = shared[2:4]
        region.close()
        assert shared.as_array().shape == (10,)
        assert SharedMemoryArray.attach(shared.name).shape == (10,)


@pytest.mark.parametrize("key", [[0, 1], np.array([1, 2]), True, np.s_[np.array([True] * 10)], "a"])
def test_advanced_indexing_is_refused(key):
    with SharedMemoryArray.allocate(None, 10) as shared, pytest.raises(TypeError, match="basic"):
        shared[key]


@pytest.mark.parametrize(
    "region",
    [(0, (11,), (8,)), (8, (10,), (8,)), (0, (10,), (-8,)), (-8, (1,), (8,)), (0, (2,), (80,))],
)
def test_a_tampered_region_never_reaches_outside_the_array(region):
    with SharedMemoryArray.allocate(None, 10) as shared:
        fields = pickle.loads(shared.__reduce__()[1][0])[:4]  # name, shape, dtype, order
        handle = _array._rebuild(*fields, region)
        with pytest.raises(LayoutError, match="does not fit"):
            handle.as_array()


@pytest.mark.parametrize(
    ("shape", "index"),
    [((0,), slice(0, 0)), ((3, 0), slice(1, 3)), ((5, 2, 0), 1), ((4,), slice(2, 2))],
)
def test_empty_regions_work_everywhere(shape, index):
    with SharedMemoryArray.allocate(None, shape, "u1") as shared:
        region = shared[index]
        expected = np.zeros(shape, "u1")[index].shape
        assert region.as_array().shape == expected
        assert pickle.loads(pickle.dumps(region)).as_array().shape == expected
        with region.lock():
            pass
