"""transfer(): a segment made in one process becomes the property of the one that receives it."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import signal

import numpy as np
import pytest

from helpers import (
    made_in_worker,
    made_in_worker_memfd,
    memfd_handovers_settled,
    memfd_labels,
    run_python,
)
from shared_memory_array import (
    NotOwnerError,
    SegmentNotFoundError,
    SharedMemoryArray,
    SharedMemoryManager,
    clean_segments,
    segment_info,
)

SHM = "/dev/shm"


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM, name))


memfd_only = pytest.mark.skipif(
    not hasattr(os, "memfd_create"), reason="memfd segments need Linux's memfd_create"
)
BACKENDS = ["named", pytest.param("memfd", marks=memfd_only)]


def test_pool_workers_hand_their_arrays_to_the_parent(context):
    # maxtasksperchild=1: each worker exits right after sending its result
    with context.Pool(2, maxtasksperchild=1) as pool:
        received = pool.map(made_in_worker, range(6))
    assert [int(handle.as_array()[0]) for handle in received] == list(range(6))
    assert all(handle.owner for handle in received)
    assert all(segment_info(handle.name).keeper_pid == os.getpid() for handle in received)
    names = [handle.name for handle in received]
    for handle in received:
        handle.close()
    assert not any(exists(name) for name in names)


def test_process_pool_executor_results_are_received_once(context):
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=context) as executor:
        handle = executor.submit(made_in_worker, 7).result()
    with handle:
        assert handle.owner and handle.as_array().sum() == 7000


def test_a_second_receiver_fails_at_first_use_not_at_unpickling():
    sent = pickle.dumps(SharedMemoryArray.copy(None, np.arange(5.0)).transfer())
    first = pickle.loads(sent)
    second = pickle.loads(sent)  # unpickling never raises
    assert first.owner and not second.owner
    with pytest.raises(SegmentNotFoundError, match="received already"):
        second.as_array()
    assert first.as_array().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    first.close()
    assert not exists(first.name)


def test_the_sender_is_closed_and_never_unlinks():
    made = SharedMemoryArray.copy(None, np.ones(3))
    view = made.as_array()
    sent = made.transfer()
    assert made.closed and not made.owner and not sent.owner
    assert view.sum() == 3.0  # arrays taken before stay valid
    made.close()
    received = pickle.loads(pickle.dumps(sent))
    del sent
    gc.collect()
    assert exists(received.name)
    received.close()
    assert not exists(received.name)


def test_a_transfer_never_pickled_is_unlinked_when_collected():
    made = SharedMemoryArray.copy(None, np.ones(3))
    name = made.name
    sent = made.transfer()
    assert exists(name)
    del sent
    gc.collect()
    assert not exists(name)


def test_only_an_owner_made_without_a_manager_can_transfer():
    with SharedMemoryArray.copy(None, np.ones(3)) as made:
        attached = SharedMemoryArray.attach(made.name)
        with pytest.raises(NotOwnerError, match="transferred by its owner"):
            attached.transfer()
        with pytest.raises(NotOwnerError):
            made[1:].transfer()
        attached.close()
    with SharedMemoryManager() as manager:
        kept = SharedMemoryArray.copy(manager, np.ones(3))
        with pytest.raises(NotOwnerError, match="without a manager"):
            kept.transfer()
        kept.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_separate_interpreter_receives_and_owns_it(tmp_path, backend):
    made = SharedMemoryArray.copy(None, np.arange(4.0), backend=backend)
    (tmp_path / "sent").write_bytes(pickle.dumps(made.transfer()))
    result = run_python(
        """
        import pickle, sys
        handle = pickle.loads(open(sys.argv[1], "rb").read())
        print(handle.owner, handle.as_array().sum(), handle.backend, handle.name, flush=True)
        """,
        str(tmp_path / "sent"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    owner, total, kind, name = result.stdout.split()
    assert (owner, total, kind) == ("True", "6.0", backend)
    assert not exists(name)  # named: the receiver unlinked it at exit
    assert not exists(made.name)
    memfd_handovers_settled()
    assert memfd_labels() == []  # memfd: claimed, so this process let go of it


def test_a_segment_sent_but_never_received_is_cleaned_once_the_sender_has_gone(tmp_path):
    result = run_python(
        """
        import pickle, sys
        import numpy as np
        from shared_memory_array import SharedMemoryArray
        sent = SharedMemoryArray.copy(None, np.ones(3)).transfer()
        open(sys.argv[1], "wb").write(pickle.dumps(sent))
        print(sent.name)
        """,
        str(tmp_path / "sent"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    name = result.stdout.strip()
    assert exists(name)  # in flight: the sender's exit left it
    assert name in [info.name for info in clean_segments()]
    late = pickle.loads((tmp_path / "sent").read_bytes())
    with pytest.raises(SegmentNotFoundError):
        late.as_array()


def test_a_killed_receiver_leaves_nothing(tmp_path):
    made = SharedMemoryArray.copy(None, np.ones(3))
    (tmp_path / "sent").write_bytes(pickle.dumps(made.transfer()))
    result = run_python(
        """
        import os, pickle, signal, sys
        handle = pickle.loads(open(sys.argv[1], "rb").read())
        print(handle.name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        str(tmp_path / "sent"),
    )
    assert result.returncode == -signal.SIGKILL
    # its resource tracker removes it (the leak check waits for that)
    assert result.stdout.strip().startswith("sma_")


def receive_and_close(connection) -> None:
    """In a child: take the handle from a pipe, use it, close it, say what it saw."""
    handle = connection.recv()
    name = handle.name
    facts = (handle.owner, float(handle.as_array().sum()))
    handle.close()
    connection.send((*facts, exists(name)))


def test_a_pipe_hands_it_to_a_child(context):
    ours, theirs = context.Pipe()
    child = context.Process(target=receive_and_close, args=(theirs,))
    child.start()
    theirs.close()
    made = SharedMemoryArray.copy(None, np.arange(4.0))
    ours.send(made.transfer())
    assert ours.recv() == (True, 6.0, False)
    child.join(60)
    ours.close()
    assert child.exitcode == 0
    assert not exists(made.name)


def test_joblib_workers_hand_their_arrays_to_the_caller():
    joblib = pytest.importorskip("joblib", reason="joblib is an optional test dependency")
    from joblib.externals.loky import get_reusable_executor

    received = joblib.Parallel(n_jobs=2)(joblib.delayed(made_in_worker)(i) for i in range(4))
    get_reusable_executor().shutdown(wait=True)
    assert [int(handle.as_array()[-1]) for handle in received] == [0, 1, 2, 3]
    assert all(handle.owner for handle in received)
    for handle in received:
        handle.close()


# --- memfd segments: the sender holds the segment until the receiver has opened it


@memfd_only
def test_pool_workers_hand_their_memfd_arrays_to_the_parent_as_they_exit(context):
    # maxtasksperchild=1: each worker exits right after sending, and waits for its
    # result to be claimed before its descriptor goes
    with context.Pool(2, maxtasksperchild=1) as pool:
        received = pool.map(made_in_worker_memfd, range(6))
    assert [int(handle.as_array()[0]) for handle in received] == list(range(6))
    assert all(handle.owner and handle.backend == "memfd" for handle in received)
    assert all(handle.name.startswith(f"sma_{os.getpid()}_fd") for handle in received)
    assert len(memfd_labels()) == 6  # this process holds them now
    attached = SharedMemoryArray.attach(received[0].name)  # by its new name
    assert attached.as_array()[0] == 0
    attached.close()
    for handle in received:
        handle.close()
    assert memfd_labels() == []


@memfd_only
def test_process_pool_executor_hands_memfd_arrays_over(context):
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=context) as executor:
        handles = list(executor.map(made_in_worker_memfd, [3, 4]))
    assert [int(handle.as_array().sum()) for handle in handles] == [3000, 4000]
    for handle in handles:
        handle.close()


@memfd_only
def test_a_memfd_array_is_received_once_and_the_sender_lets_go():
    made = SharedMemoryArray.copy(None, np.arange(5.0), backend="memfd")
    sent = pickle.dumps(made.transfer())
    first = pickle.loads(sent)
    second = pickle.loads(sent)  # unpickling never raises
    memfd_handovers_settled()
    late = pickle.loads(sent)  # after the sender let go of it
    assert first.owner and not second.owner and not late.owner
    for refused in (second, late):
        with pytest.raises(SegmentNotFoundError, match="received already"):
            refused.as_array()
    assert len(memfd_labels()) == 1  # the receiver's descriptor only
    assert first.as_array().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    first.close()
    assert memfd_labels() == []


@memfd_only
def test_a_memfd_transfer_never_pickled_is_closed_when_collected():
    sent = SharedMemoryArray.copy(None, np.ones(3), backend="memfd").transfer()
    assert len(memfd_labels()) == 1
    del sent
    gc.collect()
    assert memfd_labels() == []


@memfd_only
def test_a_memfd_array_nobody_receives_is_freed_when_the_sender_exits(tmp_path):
    result = run_python(
        """
        import pickle, sys
        import numpy as np
        from shared_memory_array import SharedMemoryArray, _memfd
        _memfd._RECEIVERS_SECONDS = 0.5  # how long its exit waits for a receiver
        sent = SharedMemoryArray.copy(None, np.ones(3), backend="memfd").transfer()
        open(sys.argv[1], "wb").write(pickle.dumps(sent))
        """,
        str(tmp_path / "sent"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    late = pickle.loads((tmp_path / "sent").read_bytes())
    with pytest.raises(SegmentNotFoundError, match="has exited"):
        late.as_array()


@memfd_only
def test_a_pipe_hands_a_memfd_array_to_a_child(context):
    ours, theirs = context.Pipe()
    child = context.Process(target=receive_and_close, args=(theirs,))
    child.start()
    theirs.close()
    made = SharedMemoryArray.copy(None, np.arange(4.0), backend="memfd")
    ours.send(made.transfer())
    assert ours.recv() == (True, 6.0, False)
    child.join(60)
    ours.close()
    assert child.exitcode == 0
    memfd_handovers_settled()
    assert memfd_labels() == []


@memfd_only
def test_a_frozen_memfd_array_cannot_be_transferred():
    with SharedMemoryArray.copy(None, np.ones(3), backend="memfd") as made:
        made.freeze()
        with pytest.raises(OSError, match="frozen"):
            made.transfer()
        assert made.owner


def receive_when_told(sent: bytes, start, results) -> None:
    """In a child: unpickle the hand-over once ``start`` is set, report whether it works."""
    start.wait()
    handle = pickle.loads(sent)
    try:
        results.put(float(handle.as_array().sum()))
    except SegmentNotFoundError:
        results.put(None)
    handle.close()


@memfd_only
def test_of_two_racing_receivers_exactly_one_gets_a_memfd_array():
    context = multiprocessing.get_context("fork")
    for _ in range(10):
        sent = pickle.dumps(SharedMemoryArray.copy(None, np.ones(4), backend="memfd").transfer())
        start, results = context.Event(), context.Queue()
        racers = [
            context.Process(target=receive_when_told, args=(sent, start, results)) for _ in range(2)
        ]
        for racer in racers:
            racer.start()
        start.set()
        outcomes = sorted([results.get(timeout=60), results.get(timeout=60)], key=str)
        for racer in racers:
            racer.join(60)
        results.close()
        results.join_thread()
        assert outcomes == [4.0, None]
        assert [racer.exitcode for racer in racers] == [0, 0]
