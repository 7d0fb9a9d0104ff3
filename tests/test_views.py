"""Arrays pin their mapping: close() never pulls memory from under a live view."""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest

from shared_memory_array import ClosedHandleError, SharedMemoryArray


def test_view_outlives_the_closed_owner(capfd):
    owner = SharedMemoryArray.copy(None, np.arange(1000.0))
    view = owner.as_array()[10:20]
    owner.close()
    del owner
    gc.collect()
    assert view.sum() == sum(range(10, 20))
    view[:] = 0  # still mapped and writable
    assert view.sum() == 0
    assert capfd.readouterr() == ("", "")


def test_view_outlives_a_closed_client():
    with SharedMemoryArray.copy(None, np.arange(5)) as owner:
        client = pickle.loads(pickle.dumps(owner))
        view = client.as_array()
        client.close()
        owner.as_array()[0] = 7
        assert view[0] == 7  # same memory, still mapped


def test_close_is_idempotent_and_as_array_after_close_is_a_clear_error():
    shared = SharedMemoryArray.allocate(None, 2)
    shared.close()
    shared.close()
    assert shared.closed
    with pytest.raises(ClosedHandleError, match=shared.name):
        shared.as_array()
    with pytest.raises(ClosedHandleError):
        np.asarray(shared)


def test_unpickled_handle_closed_before_first_use_is_a_clear_error():
    with SharedMemoryArray.allocate(None, 2) as owner:
        client = pickle.loads(pickle.dumps(owner))
        client.close()
        with pytest.raises(ClosedHandleError):
            client.as_array()


def test_memory_is_unmapped_with_the_last_view():
    def mapped() -> int:
        with open("/proc/self/maps") as maps:
            return sum(name in line for line in maps)

    shared = SharedMemoryArray.allocate(None, 1000)
    name = shared.name
    first, second = shared.as_array(), shared.as_array()[::2]
    shared.close()
    assert mapped() == 1
    del first
    assert mapped() == 1
    del second
    assert mapped() == 0
