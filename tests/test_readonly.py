"""Read-only handles: the memory is mapped without write access, in every process."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from helpers import try_write
from shared_memory_array import SharedMemoryArray


def test_readonly_attach_refuses_writes_and_writeable():
    with SharedMemoryArray.copy(None, np.arange(4.0)) as shared:
        client = SharedMemoryArray.attach(shared.name, readonly=True)
        assert "read-only" in try_write(client)
        assert client.as_array().tolist() == [0, 1, 2, 3]
        assert not client.owner and "readonly" in repr(client)
        shared.as_array()[1] = 7
        assert client.as_array()[1] == 7  # the same memory, seen live
        client.close()


def test_readonly_handle_refuses_writes_in_a_spawned_worker(context):
    with SharedMemoryArray.copy(None, np.arange(4.0)) as shared:
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            outcome = pool.submit(try_write, shared.as_readonly()).result(timeout=60)
        assert "read-only" in outcome
        assert shared.as_array()[0] == 0


def test_readonly_survives_pickling_and_slicing():
    with SharedMemoryArray.copy(None, np.arange(12).reshape(3, 4)) as shared:
        readonly = shared.as_readonly()
        for handle in (pickle.loads(pickle.dumps(readonly)), readonly[1:, ::2]):
            assert not handle.as_array().flags.writeable
        assert shared.as_array().flags.writeable  # the writable handle is unaffected


@pytest.mark.parametrize("order", ["C", "F"])
def test_readonly_view_equals_the_data(order):
    data = np.asarray(np.arange(12.0).reshape(3, 4), order=order)
    with SharedMemoryArray.copy(None, data) as shared:
        np.testing.assert_array_equal(shared.as_readonly().as_array(), data)


def test_readonly_says_whether_the_handle_is_read_only():
    with SharedMemoryArray.allocate(None, 3) as shared:
        assert shared.readonly is False
        assert shared.as_readonly().readonly is True
        assert SharedMemoryArray.attach(shared.name, readonly=True).readonly is True
        assert shared[1:].as_readonly()[1:].readonly is True
