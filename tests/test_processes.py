"""Handles cross process boundaries: fork, spawn, forkserver and separately started interpreters."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import helpers
from shared_memory_array import SegmentNotFoundError, SharedArray, SharedMemoryArray


def test_worker_sees_and_writes_the_same_memory(context):
    with SharedMemoryArray.copy(None, np.arange(100.0)) as shared:
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            assert pool.submit(helpers.total, shared).result(timeout=60) == 4950.0
            pool.submit(helpers.write, shared, 3, -1.0).result(timeout=60)
        assert shared.as_array()[3] == -1.0


def test_pool_map_sums_rows_like_the_published_example(context):
    data = np.random.default_rng(0).random((50, 40))
    with SharedMemoryArray.copy(None, data) as shared, context.Pool(2) as pool:
        sums = pool.map(helpers.row_sum, [(shared, row) for row in range(50)])
    assert np.allclose(sums, data.sum(axis=1))


def test_attach_in_a_child_never_registers_with_the_resource_tracker(context):
    with SharedMemoryArray.allocate(None, 10) as shared:
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            sent = pool.submit(helpers.tracker_messages, shared).result(timeout=60)
        assert [message for message in sent if shared.name in message[1]] == []
        assert os.path.exists(f"/dev/shm/{shared.name}")
        assert shared.as_array()[0] == 2


def test_unpickled_handle_in_a_child_is_not_an_owner(context):
    with SharedMemoryArray.allocate(None, 10) as shared:
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            owner, refused = pool.submit(helpers.owner_facts, shared).result(timeout=60)
        assert (owner, refused) == (False, True)
        assert os.path.exists(f"/dev/shm/{shared.name}")


def test_errors_in_a_worker_travel_back_intact(context):
    shared = SharedMemoryArray.allocate(None, 4)
    shared.close()  # unlinks: the worker will not find it
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        future = pool.submit(helpers.total, shared)
        with pytest.raises(SegmentNotFoundError) as info:
            future.result(timeout=60)
    assert info.value.segment == shared.name
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("how", ["attach", "unpickle"])
def test_unrelated_process_exit_keeps_owner_data(how):
    with SharedArray.copy(None, np.arange(10.0)) as shared:
        ref = shared.name if how == "attach" else pickle.dumps(shared).hex()
        result = helpers.run_python(
            """
            import pickle, sys
            from shared_memory_array import SharedMemoryArray
            ref = sys.argv[1]
            if sys.argv[2] == "attach":
                handle = SharedMemoryArray.attach(ref)
            else:
                handle = pickle.loads(bytes.fromhex(ref))
            handle.as_array()[0] = 42
            print(handle.owner)
            # exit without closing: the interpreter's cleanup must not unlink
            """,
            ref,
            how,
        )
        assert result.returncode == 0, result.stderr
        assert (result.stdout, result.stderr) == ("False\n", "")
        assert os.path.exists(f"/dev/shm/{shared.name}")
        assert SharedArray.attach(shared.name).as_array()[0] == 42


def test_separately_started_interpreter_can_create_and_hand_over_by_name():
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from shared_memory_array import SharedMemoryArray
        with SharedMemoryArray.copy(None, np.arange(5)) as shared:
            print(shared.name, flush=True)
            sys.stdin.readline()
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as creator:
        assert creator.stdout is not None and creator.stdin is not None
        name = creator.stdout.readline().strip()
        attached = SharedMemoryArray.attach(name)
        values = attached.as_array()
        assert values.tolist() == [0, 1, 2, 3, 4]
        creator.stdin.write("\n")
        creator.stdin.flush()
        assert creator.wait(timeout=60) == 0
        assert creator.stderr is not None and creator.stderr.read() == ""
    assert not os.path.exists(f"/dev/shm/{name}")
    assert values.tolist() == [0, 1, 2, 3, 4]  # our mapping outlives the name
    attached.close()
