"""The drop-in ProcessPoolExecutor and Pool: plain arrays in and out, through shared memory."""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing.pool
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

import shared_memory_array
from helpers import (
    BIG,
    Counter,
    add_one_to_first,
    big,
    describe,
    fail,
    in_steps,
    kill_self,
    loaded_here,
    made_and_transferred,
    mapped_segments,
    mark_then_fail,
    nested_result,
    own_then_die,
    own_then_die_on_the_second,
    run_python,
    scribble,
    segments_mapped_here,
    slow,
    started_then_slow,
    twice,
    twice_the_same,
    unpicklable,
    wait_for_file,
    worker_pid,
    write_then_fail_or_list,
    written_kib,
)
from shared_memory_array import Pool, ProcessPoolExecutor, segment_info

SHM = "/dev/shm"
# ------------------------------------------------------------------ arguments


def test_task_writes_reach_neither_the_caller_nor_the_next_task(context):
    data = big(1.0)
    with ProcessPoolExecutor(1, mp_context=context) as executor:
        results = list(executor.map(scribble, [data] * 3))
        again = executor.submit(scribble, data).result()
    assert results == [(BIG / 8, -BIG / 8)] * 3
    assert again == (BIG / 8, -BIG / 8)
    assert (data == 1.0).all()


def test_pool_task_writes_reach_neither_the_caller_nor_the_next_task(context):
    data = big(1.0)
    with Pool(1, context=context) as pool:
        results = pool.map(scribble, [data] * 3, chunksize=1)
        results += pool.map(scribble, [data] * 2, chunksize=2)  # same chunk, one copy each task
        results.append(pool.apply(scribble, (data,)))
    assert results[:3] == [(BIG / 8, -BIG / 8)] * 3
    assert results[3][0] == BIG / 8 and results[4][0] == -BIG / 8  # pickling shares within a chunk
    assert results[5] == (BIG / 8, -BIG / 8)
    assert (data == 1.0).all()


@pytest.mark.parametrize("backend", ["named", "memfd"])
def test_a_task_that_keeps_its_argument_and_the_tasks_after_it_see_none_of_each_others_writes(
    context, backend, monkeypatch
):
    # A worker keeps an argument's mapping for the tasks after, refreshed for each:
    # one that a task still holds is never refreshed under it.
    if backend == "memfd" and not hasattr(os, "memfd_create"):
        pytest.skip("memfd segments need Linux's memfd_create")
    monkeypatch.setenv("SHARED_MEMORY_ARRAY_BACKEND", backend)
    data = big(1.0)
    steps = [("keep", data), ("scribble", data), ("look", data), ("look", data)]
    with Pool(1, context=context) as pool:
        sums = pool.starmap(in_steps, steps, chunksize=1)
    ones = BIG / 8
    kept = ones + 4  # what the first task wrote, and sees still
    assert sums == [(kept, kept), (-ones, kept), (ones, kept), (ones, kept)]
    assert (data == 1.0).all()


def test_a_worker_keeps_an_argument_mapped_between_tasks_until_it_is_removed(context):
    data, more = big(1.0), threading.Event()

    def items():
        yield data
        yield data
        more.wait(60)  # the array's segment is held until an item comes without it
        yield None

    with Pool(1, context=context) as pool:
        try:
            results = pool.imap(segments_mapped_here, items())  # each writes to all of it
            first, second = next(results), next(results)
            assert len(first) == 1 and second == first  # one mapping, each task
            (worker,) = pool._pool
            assert mapped_segments(worker.pid) == first  # kept while the worker waits,
            assert written_kib(worker.pid, first[0]) == [0]  # its written pages given back
        finally:
            more.set()
        list(results)
        deadline = time.monotonic() + 30
        while mapped_segments(worker.pid):  # the segment is removed: the worker lets go
            assert time.monotonic() < deadline, "a worker kept a removed segment mapped"
            time.sleep(0.05)


def test_a_map_chunk_gives_back_what_its_tasks_wrote_as_it_ends(monkeypatch):
    # In this process, as a pool worker runs a chunk of `map`: the chunk's tasks
    # share one view, and the memory they wrote goes back once the chunk is done,
    # not only when the next task maps the argument again.
    from shared_memory_array import _offload, _segment

    if not _segment.CAN_REFRESH:
        pytest.skip("refreshing a kept mapping needs Linux's madvise")
    monkeypatch.setattr(_offload, "_keeping", True)
    monkeypatch.setattr(_offload, "_kept", {})
    arguments, holds = _offload.Arguments(0), []
    try:
        (argument,) = arguments.share([big(1.0)], holds)
        chunk = tuple((_offload.Shared, None, argument) for _ in range(2))
        task = _offload.Ticketed(scribble, False, arguments.min_bytes)
        sums = _offload.Chunk(multiprocessing.pool.mapstar)((task, chunk))
        assert sums == [(BIG / 8, -BIG / 8), (-BIG / 8, -BIG / 8)]
        # Two mappings here: the one that copied the array in, and the chunk's, kept
        # for the next chunk, with what its tasks wrote given back.
        assert written_kib(os.getpid(), argument.name) == [0, 0]
    finally:
        arguments.release(holds)
        arguments.close()


def test_an_item_whose_segment_is_gone_fails_alone_and_returns_its_ticket():
    # In this process, as a pool worker runs it: the error comes back as the item's
    # value, with the receipt that lets the pool count its chunk as back.
    from shared_memory_array import _offload

    gone = _offload.Argument("sma_1_0123456789abcdef", False)
    task = _offload.Ticketed(len, False, 0)
    back = task((_offload.Shared, 7, (gone,)))
    assert type(back) is _offload.Receipted and back.number == 7
    assert type(back.value) is _offload.Raised
    assert isinstance(back.value.error.exc, shared_memory_array.SegmentNotFoundError)


def test_one_map_copies_each_distinct_array_once(monkeypatch):
    copies = []
    original = shared_memory_array.SharedMemoryArray.copy

    def counted(manager, data, **kwargs):
        copies.append(data.shape)
        return original(manager, data, **kwargs)

    monkeypatch.setattr(shared_memory_array.SharedMemoryArray, "copy", counted)
    first, second = big(1.0), big(2.0)
    with ProcessPoolExecutor(2) as executor:
        sums = list(executor.map(describe, [first, second] * 20))
    assert len(copies) == 2
    assert [facts[0][0][3] for facts in sums] == [BIG / 8, BIG / 4] * 20
    with Pool(2) as pool:
        copies.clear()
        pool.starmap(describe, [(first, second, first)] * 20)
        assert len(copies) == 2
        copies.clear()
        list(pool.imap(describe, [first] * 20))
        assert len(copies) == 1


def test_an_array_changed_between_submits_reaches_each_task_as_it_was():
    data = big(1.0)
    with ProcessPoolExecutor(1) as executor:
        blocker = executor.submit(time.sleep, 0.2)  # the tasks below wait in the queue
        first = executor.submit(describe, data)
        data[:] = 2.0
        second = executor.submit(describe, data)
        blocker.result()
        assert first.result()[0][0][3] == BIG / 8
        assert second.result()[0][0][3] == BIG / 4


def test_tasks_get_what_pickling_would_give_them(context):
    fortran = np.asfortranarray(np.ones((512, 512)))
    strided = np.ones((1024, 512))[::2, ::-1]
    scalar = np.array(5.0)
    small = np.ones(10)
    objects = np.array([{"a": 1}] * 10, dtype=object)
    with ProcessPoolExecutor(1, mp_context=context) as executor:
        given, named, segments = executor.submit(
            describe, fortran, [strided, (scalar, small)], key={"objects": objects, "x": 3}
        ).result()
    assert given == [
        ("ndarray", (512, 512), True, 512 * 512),
        [
            ("ndarray", (512, 512), False, 512 * 512),
            [("ndarray", (), False, 5.0), ("ndarray", (10,), False, 10.0)],
        ],
    ]
    assert named == {"key": {"objects": ("ndarray", (10,), False, None), "x": 3}}
    assert len(segments) == 2  # the two large arrays, mapped in the worker


def test_a_memmap_argument_arrives_as_a_memmap(tmp_path):
    on_disk = np.memmap(tmp_path / "data", dtype=np.float64, mode="w+", shape=(BIG // 8,))
    on_disk[:] = 3.0
    with ProcessPoolExecutor(1) as executor:
        given = executor.submit(describe, on_disk).result()[0]
    assert given == [("memmap", (BIG // 8,), False, 3.0 * BIG / 8)]
    del on_disk


def test_min_bytes_chooses_what_goes_through_shared_memory():
    with ProcessPoolExecutor(1, min_bytes=0) as executor:
        assert len(executor.submit(describe, np.ones(4)).result()[2]) == 1
    with ProcessPoolExecutor(1, min_bytes=BIG * 2) as executor:
        assert executor.submit(describe, big()).result()[2] == []
    with pytest.raises(ValueError, match="min_bytes"):
        ProcessPoolExecutor(1, min_bytes=-1)


# ------------------------------------------------------------------ results


def test_results_come_back_as_plain_arrays_that_own_their_memory(context):
    data = big(3.0)
    with ProcessPoolExecutor(2, mp_context=context) as executor:
        doubled = list(executor.map(twice, [data] * 4))
        nested = executor.submit(nested_result, 7).result()
    assert all(type(array) is np.ndarray and (array == 6.0).all() for array in doubled)
    assert (nested["big"][0] == 7).all() and nested["big"][1][1] == "label"
    assert nested["n"] == 7
    # their names are gone already: the memory is theirs
    assert not any(os.path.exists(os.path.join(SHM, name)) for name in mapped_segments())
    before = len(mapped_segments())
    del doubled
    assert len(mapped_segments()) == before - 4


def test_pool_results_in_every_form(context):
    data = big(2.0)
    with Pool(2, context=context) as pool:
        assert (pool.apply(twice, (data,)) == 4.0).all()
        assert all((array == 4.0).all() for array in pool.map(twice, [data] * 3))
        assert all((array == 4.0).all() for array in pool.map_async(twice, [data] * 3).get(60))
        assert all((array == 4.0).all() for array in pool.imap(twice, [data] * 3))
        unordered = pool.imap_unordered(twice, [data] * 3, chunksize=2)
        assert all((array == 4.0).all() for array in unordered)
        arrived = []
        done = pool.apply_async(twice, (data,), callback=arrived.append)
        assert (done.get(60) == 4.0).all() and done.successful()
        assert (arrived[0] == 4.0).all()


def test_a_result_made_in_shared_memory_and_transferred_is_handed_over_without_a_copy(context):
    with ProcessPoolExecutor(2, mp_context=context) as executor:
        pairs = list(executor.map(made_and_transferred, [1.0, 2.0]))
    with Pool(2, context=context) as pool:
        pairs += pool.map(made_and_transferred, [3.0, 4.0])
    for value, (handle, inode) in zip([1.0, 2.0, 3.0, 4.0], pairs):
        assert handle.owner and (handle.as_array() == value).all()
        assert os.stat(os.path.join(SHM, handle.name)).st_ino == inode  # the worker's file
        handle.close()
        assert not os.path.exists(os.path.join(SHM, handle.name))


# ------------------------------------------------------------------ failures leave nothing


def test_tasks_that_raise_release_their_arguments(context):
    with ProcessPoolExecutor(1, mp_context=context) as executor:
        with pytest.raises(ValueError, match="task saw"):
            executor.submit(fail, big()).result()
        with pytest.raises(ValueError, match="task saw"):
            list(executor.map(fail, [big()]))
    with Pool(1, context=context) as pool:
        errors = []
        with pytest.raises(ValueError, match="task saw"):
            pool.apply_async(fail, (big(),), error_callback=errors.append).get(60)
        assert len(errors) == 1
        with pytest.raises(ValueError, match="task saw"):
            pool.map(fail, [big()] * 2)


def test_a_killed_worker_breaks_the_pool_and_leaves_nothing(context):
    executor = ProcessPoolExecutor(1, mp_context=context)
    with pytest.raises(concurrent.futures.process.BrokenProcessPool):
        executor.submit(kill_self, big()).result()
    executor.shutdown()


def test_what_a_killed_worker_owned_is_removed_at_shutdown(context):
    executor = ProcessPoolExecutor(1, mp_context=context)
    with pytest.raises(concurrent.futures.process.BrokenProcessPool):
        executor.submit(own_then_die, None).result()
    executor.shutdown()  # not at this process's exit, by the resource tracker
    pool = Pool(1, context=context)
    pool.apply_async(own_then_die, (None,))  # the pool replaces the worker; the call never ends
    time.sleep(0.5)
    pool.terminate()


def test_what_a_worker_started_during_a_call_owned_is_removed_at_terminate(tmp_path):
    # maxtasksperchild=1: the second item runs in a worker the pool started during
    # the call, which is killed with a segment of its own
    marker = tmp_path / "name"
    pool = Pool(1, maxtasksperchild=1)
    pool.starmap_async(own_then_die_on_the_second, [(0, str(marker)), (1, str(marker))])
    while not marker.exists() or not segment_info(marker.read_text()).abandoned:
        time.sleep(0.05)  # until that worker is dead (the call never ends)
    pool.terminate()  # not at this process's exit, by the resource tracker
    assert not os.path.exists(os.path.join(SHM, marker.read_text()))


def test_cancelled_futures_and_a_shutdown_without_waiting_leave_nothing():
    executor = ProcessPoolExecutor(1)
    running = executor.submit(slow, big(), 0.5)
    pending = [executor.submit(slow, big(), 0) for _ in range(5)]
    assert pending[-1].cancel()
    manager = executor._executor_manager_thread  # closes the pool's pipes when done
    executor.shutdown(wait=False, cancel_futures=True)
    assert running.result() == 1.0
    concurrent.futures.wait(pending, timeout=60)  # cancelled futures count as done
    # those already queued for the worker run (as with concurrent.futures), the rest do not
    assert all(future.cancelled() or future.result() == 1.0 for future in pending)
    assert sum(future.cancelled() for future in pending) >= 3
    manager.join(60)


def test_a_terminated_pool_leaves_nothing(context, tmp_path):
    markers = [str(tmp_path / name) for name in ("one", "two", "three")]
    pool = Pool(2, context=context)
    pool.starmap_async(started_then_slow, [(big(), markers[0]), (big(), markers[1])])
    pool.apply_async(started_then_slow, (big(), markers[2]))  # waits for a worker
    # Stop the workers while they sleep in a task: stopping one in the middle of
    # reading or writing the pool's queues leaves their shared lock taken, and
    # any pool (multiprocessing's too) then hangs.
    deadline = time.monotonic() + 30
    while not all(os.path.exists(marker) for marker in markers[:2]):
        assert time.monotonic() < deadline, "the tasks never started"
        time.sleep(0.01)
    pool.terminate()
    pool.join()


def test_a_killed_parent_leaves_nothing():
    result = run_python(
        """
        import multiprocessing, os, signal, time
        import numpy as np
        from shared_memory_array import ProcessPoolExecutor
        def hold(array):
            time.sleep(0.2)
            return array.size
        if __name__ == "__main__":
            executor = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
            futures = [executor.submit(hold, np.ones(1 << 18)) for _ in range(4)]
            futures[0].result()
            print(os.getpid(), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.strip().isdigit()
    # its resource tracker removes the arguments' segments: the leak check waits for that


def test_a_result_that_cannot_be_taken_is_an_error():
    from shared_memory_array import _offload

    lost = _offload.take("sma_0_missing", (0, 0, 0), False)
    with pytest.raises(shared_memory_array.SegmentNotFoundError):
        _offload.check([1, {"x": lost}])


# ------------------------------------------------------------------ streams and odd results


def own_segments() -> int:
    """How many argument segments this process has in /dev/shm now."""
    prefix = f"sma_{os.getpid()}_"
    return sum(name.startswith(prefix) for name in os.listdir(SHM))


@pytest.mark.parametrize("chunksize", [1, 2])
def test_a_stream_of_arrays_is_shared_only_a_few_chunks_ahead(chunksize):
    seen = []

    def stream():
        for i in range(30):
            seen.append(own_segments())
            yield big(float(i))

    with Pool(2) as pool:
        results = pool.imap(twice, stream(), chunksize=chunksize)
        totals = [float(array.sum()) for array in results]
    assert totals == [2.0 * i * BIG / 8 for i in range(30)]
    # a chunk for each of 2 workers and one more, as pickling through the pipe would
    assert max(seen) <= 3 * chunksize


def test_a_chunk_holds_the_arrays_of_all_its_items_until_its_results_are_back():
    # chunks of 3: the first item of a chunk that holds an array carries its ticket,
    # and arrays first given to later items of the chunk are held by it too
    a, b, c, d = big(1.0), big(2.0), big(3.0), big(4.0)
    items = [1, a, b, 3, c, d, b, 4, a]
    expected = [2, 2.0, 4.0, 6, 6.0, 8.0, 4.0, 8, 2.0]

    def got(values):
        return [value if isinstance(value, int) else float(value[0]) for value in values]

    with Pool(2) as pool:
        assert got(pool.map(twice, items, chunksize=3)) == expected
        assert own_segments() == 0
        unordered = got(pool.imap_unordered(twice, iter(items), chunksize=3))
        assert sorted(unordered) == sorted(expected)
        assert own_segments() == 0


def test_a_task_that_raises_leaves_its_argument_mapping_to_the_next_task():
    data = big(1.0)
    with Pool(1) as pool:
        results = pool.imap(write_then_fail_or_list, [(data, True), (data, False)])
        failed, mapped = iter_outcomes(results)
    assert isinstance(failed, ValueError)
    assert len(mapped) == 1  # the failed task's arrays went with it: one mapping, refreshed


def test_a_worker_given_a_stream_of_arrays_keeps_no_mapping_of_those_removed():
    with Pool(1) as pool:
        stream = (big(float(i)) for i in range(30))
        mapped = [len(names) for names in pool.imap(segments_mapped_here, stream)]
    assert max(mapped) <= 2  # its own, and the last task's if not yet removed


def test_a_stream_of_new_arrays_waits_while_the_tasks_given_them_are_out(tmp_path):
    release, produced = str(tmp_path / "release"), []

    def stream():
        for i in range(10):
            produced.append(i)
            yield big(float(i))

    with Pool(2) as pool:
        results = pool.imap(functools.partial(wait_for_file, path=release), stream())
        time.sleep(1)  # several of the feed's polls: it must keep waiting through them
        sent_while_blocked = len(produced)
        open(release, "w").close()
        got = [float(array[0]) for array in results]
    assert got == [float(i) for i in range(10)]
    # three out (a chunk for each of 2 workers and one more), a fourth copied and waiting
    assert sent_while_blocked <= 4


@pytest.mark.parametrize("same_array", [False, True], ids=["ints", "one array"])
def test_items_that_bring_no_new_segment_go_out_without_waiting_for_results(tmp_path, same_array):
    data, release, produced = big(1.0), str(tmp_path / "release"), []

    def items():
        for i in range(40):
            produced.append(i)
            yield (data, i) if same_array else i

    with Pool(2) as pool:
        results = pool.imap(functools.partial(wait_for_file, path=release), items())
        deadline = time.monotonic() + 30
        while len(produced) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        sent_while_blocked = len(produced)  # every task waits for the release file
        open(release, "w").close()
        got = list(results)
    assert sent_while_blocked == 40
    if same_array:
        assert [i for _, i in got] == list(range(40)) and all((a == 1.0).all() for a, _ in got)
    else:
        assert got == list(range(40))


def test_results_that_cannot_be_pickled_fail_without_hanging():
    with Pool(1) as pool:
        with pytest.raises(multiprocessing.pool.MaybeEncodingError):
            pool.map(unpicklable, [big()] * 8, chunksize=1)
        failures = 0
        for outcome in iter_outcomes(pool.imap(unpicklable, [big()] * 8)):
            failures += isinstance(outcome, multiprocessing.pool.MaybeEncodingError)
        assert failures == 8
        assert (pool.apply(twice, (big(),)) == 2.0).all()  # the pool still works


def iter_outcomes(results):
    """Each result of an iterator, or the exception it raised for it."""
    while True:
        try:
            yield next(results)
        except StopIteration:
            return
        except Exception as exc:
            yield exc


# ------------------------------------------------------------------ as the standard pools do


def test_leaving_the_pool_with_calls_in_flight_does_not_wait_for_them():
    # In a separate interpreter: multiprocessing's own pools, left so, keep their
    # pipes open as long as the process lives.
    result = run_python(
        """
        import time
        from shared_memory_array import Pool

        def nap(value):
            time.sleep(0.5)
            return value

        if __name__ == "__main__":
            import faulthandler
            # Hung once on 3.9 in CI, cause not found: if it hangs, say where.
            faulthandler.dump_traceback_later(45, exit=True)
            started = time.monotonic()
            with Pool(2) as pool:
                for _ in pool.imap(nap, range(50)):
                    break
            with Pool(2) as pool:
                pool.map_async(nap, range(50))
            print(round(time.monotonic() - started))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert int(result.stdout) < 10  # the 50 naps would take 12 s each time


def test_terminate_ends_the_task_thread_before_it_kills_the_workers():
    # multiprocessing.Pool kills the workers first, and its task thread then waits
    # forever for the result queue's lock if a killed worker held it (cpython#96995).
    def slowly():
        while True:
            time.sleep(0.05)
            yield 0.5

    seen = []
    with Pool(2) as pool:
        pool.imap(time.sleep, slowly())  # the task thread is busy taking items
        time.sleep(0.2)
        task_thread = pool._task_handler  # type: ignore[attr-defined]
        for worker in pool._pool:  # type: ignore[attr-defined]
            kill = worker.terminate

            def watched(kill=kill):
                seen.append(task_thread.is_alive())
                kill()

            worker.terminate = watched
    assert seen == [False, False]


def test_a_task_that_cannot_be_sent_fails_the_map_at_once():
    with Pool(2) as pool, pytest.raises(Exception, match=r"pickle|local object"):
        pool.map(lambda value: value, range(100))


def test_the_pool_replaces_workers_that_exit_and_a_closed_pool_finishes_its_calls(context):
    # Our Pool's worker thread wakes for workers' exits and the pool's own
    # notices only, not for every result waiting to be read, as the standard one does.
    with Pool(2, context=context, maxtasksperchild=1) as pool:  # each exits after a task
        assert len(set(pool.map(worker_pid, range(6), chunksize=1))) == 6
    pool = Pool(2, context=context)
    try:
        pending = pool.map_async(twice, [big(1.0)] * 4, chunksize=1)
        pool.close()
        pool.join()  # returns once the call is done: its results are in
        assert [float(result[0]) for result in pending.get(0)] == [2.0] * 4
    finally:
        pool.terminate()


def test_empty_calls_return_empty_lists():
    with Pool(1) as pool:
        assert pool.map(abs, []) == pool.starmap(max, []) == pool.map_async(abs, []).get() == []


def test_an_array_given_twice_is_one_array_in_the_task_and_in_the_result():
    data = big(1.0)
    with ProcessPoolExecutor(1) as executor:
        assert executor.submit(add_one_to_first, data, data).result() == (True, 2.0)
        first, second = executor.submit(twice_the_same, data).result()
    assert first is second
    with Pool(1) as pool:
        assert pool.apply(add_one_to_first, (data, data)) == (True, 2.0)
    assert (data == 1.0).all()


@pytest.mark.parametrize("chunksize", [1, 2])
def test_each_chunk_gets_its_own_copy_of_a_task_function_with_state(context, chunksize):
    # A map's function goes to the workers once per worker when it is pickled by
    # name, and with each chunk, as with the standard pool, when it has state.
    items = [1, 2, 3, 4]
    with context.Pool(1) as standard, Pool(1, context=context) as pool:
        expected = standard.map(Counter(), items, chunksize)
        assert pool.map(Counter(), items, chunksize) == expected
        partial = functools.partial(Counter.__call__, Counter())
        assert pool.map(partial, items, chunksize) == expected
        assert pool.map(abs, [-1, 2], chunksize) == [1, 2]  # a builtin, by name
        assert list(pool.imap(Counter(), items, chunksize)) == expected
        # A local function: pickled by name, but not found by it.
        with pytest.raises((pickle.PicklingError, AttributeError)) as refused:
            standard.map(lambda x: x, items, chunksize)
        with pytest.raises(type(refused.value)):
            pool.map(lambda x: x, items, chunksize)
    assert expected == ([1, 1, 1, 1] if chunksize == 1 else [1, 2, 1, 2])
    with Pool(1, context=context) as fresh:
        # By name: the chunk's wrapper and the task function, each loaded once.
        assert set(fresh.map(loaded_here, items, chunksize)) == {2}


@pytest.mark.parametrize("argument", ["small", "large"])
def test_a_map_chunk_stops_at_its_first_error_as_in_the_standard_pool(tmp_path, argument):
    given = big() if argument == "large" else None  # large: shared, its chunk ticketed
    ran = {}
    for kind, make in (("stdlib", multiprocessing.pool.Pool), ("ours", Pool)):
        with make(1) as pool:
            # one chunk; four, the second failing at its end (the flag ends with it)
            for chunksize in (8, 2):
                directory = tmp_path / f"{kind}_{chunksize}"
                directory.mkdir()
                items = [(str(directory), i, given) for i in range(8)]
                with pytest.raises(ValueError, match="at 3"):
                    pool.map(mark_then_fail, items, chunksize=chunksize)
                ran[kind, chunksize] = sorted(int(path.name) for path in directory.iterdir())
    assert ran["ours", 8] == ran["stdlib", 8] == [0, 1, 2, 3]
    assert ran["ours", 2] == ran["stdlib", 2] == list(range(8))


def test_the_items_a_failed_chunk_skips_still_give_back_its_arrays(tmp_path):
    # Each chunk's first array comes after its failing item: the chunk's ticket is on
    # a skipped item.  Unreturned, the call would wait for room to send the third.
    items = [
        (str(tmp_path), 8 * chunk + k, big(chunk) if k > 3 else None)
        for chunk in range(5)
        for k in range(8)
    ]
    with Pool(1) as pool:
        with pytest.raises(ValueError, match="at 3"):
            pool.map_async(mark_then_fail, items, chunksize=8).get(60)
        assert len(list(tmp_path.iterdir())) == 5 * 4
        assert pool.map(len, [big()] * 3) == [BIG // 8] * 3


def test_odd_arguments_and_errors_travel_as_with_the_standard_pools():
    cyclic: list = [big()]
    cyclic.append(cyclic)
    with ProcessPoolExecutor(1) as executor:
        assert executor.submit(len, cyclic).result() == 2
    with Pool(1) as pool, pytest.raises(ValueError, match="invalid literal") as raised:
        pool.map(int, ["not a number"])
    assert type(raised.value.__cause__).__name__ == "RemoteTraceback"
    with pytest.raises(TypeError, match="callable"):
        ProcessPoolExecutor(1, initializer=5)
    with pytest.raises(TypeError, match="callable"):
        Pool(1, initializer=5)
