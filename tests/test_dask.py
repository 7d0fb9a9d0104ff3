"""Publishing to a Dask cluster on this host: one copy, read-only views, and who frees it.

Two hosts are simulated in test_dask_hosts.py.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from helpers import (
    drop_kept,
    identity,
    pretend_to_run_on,
    pss_bytes,
    read,
    read_and_keep,
    release_before_linking,
)
from shared_memory_array import (
    ForeignHostError,
    ReleasedError,
    SegmentNotFoundError,
    SharedMemoryArray,
    UnsupportedDtypeError,
    _hostcopy,
    _names,
    _rebuild,
    _segment,
)

distributed = pytest.importorskip(
    "distributed", reason="distributed is an optional test dependency"
)
smd = pytest.importorskip("shared_memory_array.dask")
pytest.importorskip("shared_memory_array._dask_fetch")

SHM = "/dev/shm"


def segments(name: str) -> bool:
    return os.path.exists(os.path.join(SHM, name))


def sums_read(client: Any, published: Any, tasks: int = 4) -> set[float]:
    """The sums ``tasks`` tasks read from ``published``: one value if they all agree."""
    results = client.gather(client.map(read, [published] * tasks, pure=False))
    return {total for total, _, _ in results}


def holders(name: str) -> list[int]:
    """The processes that have segment ``name`` open or mapped, unlinked or not."""
    return _segment.holders().get(name, [])


def wait_for_restart(client: Any, killed: set[int], timeout: float = 60) -> None:
    """Wait until the nannies replaced the ``killed`` workers (2 workers again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # a worker going away meanwhile
            now = set(client.run(os.getpid).values())
            if len(now) == 2 and not now & killed:
                return
        time.sleep(0.1)
    raise AssertionError(f"the workers were not restarted in {timeout} s")


def made_since(before: set[str], client: Any) -> set[str]:
    """Segments made since ``before`` by this process or the cluster's workers.

    Other programs (another test run, say) may use /dev/shm at the same time.
    """
    makers = {"late", str(os.getpid()), *map(str, client.run(os.getpid).values())}
    new = set(os.listdir(SHM)) - before
    return {name for name in new if name.startswith("sma_") and name.split("_")[1] in makers}


def only_name(published: Any) -> str:
    [name] = published.hosts.values()
    return name


@pytest.fixture
def client() -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture
def data() -> np.ndarray:
    return np.arange(30_000.0).reshape(300, 100)


def test_publish_places_one_copy_that_every_worker_reads_read_only(client, data):
    before = set(os.listdir(SHM))
    with smd.publish(client, data) as published:
        assert list(published.hosts) == [smd.host_key()]
        assert made_since(before, client) == {only_name(published)}
        results = client.gather(client.map(read, [published] * 8, pure=False))
        assert {total for total, _, _ in results} == {float(data.sum())}
        assert not any(writeable for _, writeable, _ in results)
        assert len({pid for _, _, pid in results}) == 2
        # the client's own host holds the copy too
        np.testing.assert_array_equal(published.as_array(), data)
        np.testing.assert_array_equal(np.asarray(published), data)
    assert not segments(only_name(published))


def test_fortran_and_structured_arrays_keep_their_layout(client):
    fortran = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    records = np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i4"), ("b", ">f8")])
    for array in (fortran, records):
        with smd.publish(client, array) as published:
            view = client.submit(lambda p: p.as_array().copy(order="K"), published).result()
            np.testing.assert_array_equal(view, array)
            assert view.dtype == array.dtype
            assert view.flags.f_contiguous == array.flags.f_contiguous


def test_four_workers_add_at_most_one_point_one_times_the_array_in_pss():
    array = np.random.default_rng(0).random(16 * 1024 * 1024 // 8 * 8)  # 128 MiB
    with (
        distributed.LocalCluster(
            n_workers=4, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(gc.collect)
        before = sum(client.run(pss_bytes).values())
        with smd.publish(client, array) as published:
            pids = client.run(read_and_keep, published)
            assert len(set(pids.values())) == 4
            client.run(gc.collect)
            added = sum(client.run(pss_bytes).values()) - before
            client.run(drop_kept)
    assert added <= 1.1 * array.nbytes, f"workers added {added / array.nbytes:.2f}x the array"


def test_release_frees_every_copy_and_later_use_raises_released_error(client, data):
    published = smd.publish(client, data)
    name = only_name(published)
    published.release()
    assert not segments(name)
    error = client.submit(read, published, pure=False).exception(timeout=60)
    assert isinstance(error, ReleasedError)
    assert isinstance(error, FileNotFoundError)
    assert error.segment == name
    assert "released" in str(error)
    published.release()  # idempotent


def test_release_leaves_no_worker_or_nanny_holding_the_copy(client, data):
    published = smd.publish(client, data)
    name = only_name(published)
    futures = client.map(read, [published] * 4, pure=False)  # Dask keeps their arguments
    client.gather(futures)
    pids = set(client.run(os.getpid).values())
    assert pids | {os.getpid()} <= set(holders(name))  # LocalCluster's nannies run here
    published.release()
    assert holders(name) == []
    del futures


def test_client_restart_keeps_the_copy_for_the_new_workers(client, data):
    with smd.publish(client, data) as published:
        client.gather(client.map(read, [published] * 4, pure=False))
        client.restart()
        assert segments(only_name(published))
        assert sums_read(client, published) == {float(data.sum())}


def test_every_worker_killed_at_once_leaves_the_copy_held_by_the_nannies(client, data):
    with smd.publish(client, data) as published:
        client.gather(client.map(read, [published] * 4, pure=False))
        pids = set(client.run(os.getpid).values())
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_for_restart(client, pids)
        # Held, so `clean` spares it; LocalCluster runs its nannies in this process.
        assert holders(only_name(published)) == [os.getpid()]
        assert sums_read(client, published) == {float(data.sum())}


def test_closing_the_cluster_frees_the_copies_its_workers_held(data):
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        published = smd.publish(client, data)
        client.gather(client.map(read, [published] * 4, pure=False))
        name = only_name(published)
        assert segments(name)
    deadline = time.monotonic() + 10
    while segments(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not segments(name)


def test_dropping_dask_results_and_replicas_never_frees_the_copy(client, data):
    with smd.publish(client, data) as published:
        future = client.submit(identity, published, pure=False)
        future.result()
        client.replicate([future])
        del future
        client.run(gc.collect)
        gc.collect()
        time.sleep(0.5)
        assert segments(only_name(published))
        assert sums_read(client, published) == {float(data.sum())}


def test_a_killed_worker_never_takes_the_copy_along(client, data):
    with smd.publish(client, data) as published:
        client.gather(client.map(read, [published] * 4, pure=False))
        victim = min(client.run(os.getpid).values())
        os.kill(victim, signal.SIGKILL)
        wait_for_restart(client, {victim})
        assert segments(only_name(published))
        assert sums_read(client, published, 6) == {float(data.sum())}


def test_publishing_again_keeps_earlier_copies(client, data):
    with smd.publish(client, data) as first, smd.publish(client, data * 2) as second:
        assert only_name(first) != only_name(second)
        totals = client.gather(client.map(read, [first, second], pure=False))
        assert [total for total, _, _ in totals] == [float(data.sum()), float(2 * data.sum())]


def test_the_published_value_pickles_small_and_unpickles_without_shared_memory(client, data):
    published = smd.publish(client, data)
    published.release()
    payload = pickle.dumps(published)
    assert len(payload) < 400
    again = pickle.loads(payload)  # nothing to attach, and nothing is attempted
    assert again.shape == data.shape
    assert again.dtype == data.dtype
    assert again.hosts == published.hosts
    with pytest.raises(ReleasedError):
        again.as_array()


def test_a_host_without_a_copy_raises_foreign_host_error(data):
    elsewhere = smd.PublishedArray(
        {"other-boot:1f": ("sma_1_0123456789abcdef", (31, 7, 4096))}, (3,), np.dtype("f8"), False
    )
    with pytest.raises(ForeignHostError) as raised:
        elsewhere.as_array()
    assert raised.value.host == smd.host_key()
    assert raised.value.hosts == ("other-boot:1f",)
    assert "other-boot:1f" in str(raised.value)


def test_a_worker_on_a_host_added_after_publish_makes_its_hosts_copy_at_first_use(client, data):
    published = smd.publish(client, data)
    late, _ = sorted(client.run(os.getpid))
    client.run(pretend_to_run_on, "late-boot:1", workers=[late])
    before = set(os.listdir(SHM))
    results = client.gather(client.map(read, [published] * 4, workers=[late], pure=False))
    assert {total for total, _, _ in results} == {float(data.sum())}
    assert not any(writeable for _, writeable, _ in results)
    [made] = made_since(before, client)  # and no draft left
    assert made.startswith("sma_late_")
    assert made in client.run(_hostcopy.held, workers=[late])[late]
    published.release()
    assert not segments(made)
    error = client.submit(read, published, workers=[late], pure=False).exception(timeout=60)
    assert isinstance(error, ReleasedError)


def test_a_new_host_with_no_host_to_copy_from_raises_foreign_host_error(client, data):
    with smd.publish(client, data) as published:
        client.run(pretend_to_run_on, "late-boot:1")  # every worker: no copy anywhere
        error = client.submit(read, published, pure=False).exception(timeout=60)
        assert isinstance(error, ForeignHostError)
        assert error.host == "late-boot:1"
        assert error.hosts == (smd.host_key(),)
        assert "no worker runs on a host with a copy" in str(error)


def test_threads_of_a_new_hosts_worker_fetch_the_array_once(data):
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
        smd.publish(client, data) as published,
    ):
        late, _ = sorted(client.run(os.getpid))
        client.run(pretend_to_run_on, "late-boot:1", workers=[late])
        with distributed.get_task_stream(client) as stream:
            futures = client.map(read, [published] * 8, workers=[late], pure=False)
            results = client.gather(futures)
        assert {total for total, _, _ in results} == {float(data.sum())}
        fetches = [task for task in stream.data if task["key"].startswith("_source_view")]
        assert len(fetches) == 1


def test_two_new_hosts_that_copy_from_each_other_never_deadlock(client, data):
    """Each worker's only thread waits for a source task on the other's: both secede."""
    x, y = sorted(client.run(os.getpid))
    client.run(pretend_to_run_on, "host-x:1", workers=[x])
    client.run(pretend_to_run_on, "host-y:1", workers=[y])
    first = _hostcopy.create(data, False, _names.generate())
    second = _hostcopy.create(data * 2, False, _names.generate())
    on_x = smd.PublishedArray({"host-x:1": first}, data.shape, data.dtype, False)
    on_y = smd.PublishedArray({"host-y:1": second}, data.shape, data.dtype, False)
    try:
        futures = [
            client.submit(read, on_y, workers=[x], pure=False),  # needs y's copy
            client.submit(read, on_x, workers=[y], pure=False),  # needs x's copy
        ]
        (total_y, _, _), (total_x, _, _) = client.gather(futures)
        assert (total_x, total_y) == (float(data.sum()), float(data.sum() * 2))
    finally:
        on_x.release(client)
        on_y.release(client)


def test_a_release_during_a_new_hosts_fetch_leaves_no_copy_there(client, data):
    published = smd.publish(client, data)
    late, _ = sorted(client.run(os.getpid))
    client.run(pretend_to_run_on, "late-boot:1", workers=[late])
    client.run(release_before_linking, only_name(published), workers=[late])
    before = set(os.listdir(SHM))
    error = client.submit(read, published, workers=[late], pure=False).exception(timeout=60)
    assert isinstance(error, ReleasedError)
    assert error.segment.startswith("sma_late_")
    assert made_since(before, client) == set()
    published.release()


def test_a_plain_handle_from_another_host_raises_foreign_host_error():
    handle = _rebuild("sma_1_0123456789abcdef", (3,), "<f8", False, None, None, False, "b:1f")
    with pytest.raises(ForeignHostError) as raised:
        handle.as_array()
    assert raised.value.hosts == ("b:1f",)
    assert raised.value.segment == "sma_1_0123456789abcdef"
    here = _rebuild("sma_1_0123456789abcdef", (3,), "<f8", False, None, None, False, smd.host_key())
    with pytest.raises(SegmentNotFoundError) as raised_here:
        here.as_array()
    assert not isinstance(raised_here.value, ForeignHostError)


def test_a_plain_handle_pickled_here_carries_this_host():
    with SharedMemoryArray.copy(None, np.ones(3)) as shared:
        again = pickle.loads(pickle.dumps(shared))
        assert float(again.as_array().sum()) == 3.0
        assert again._spec.host == smd.host_key()


def test_publish_refuses_object_arrays_before_sending_anything(client):
    with pytest.raises(UnsupportedDtypeError):
        smd.publish(client, np.array([object()]))


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_workers_started_by_each_start_method_read_the_copy(method, data):
    dask = pytest.importorskip("dask")
    # Under fork, one worker: each nanny forks its worker from a thread of its own,
    # and filelock (imported by Ray, which this suite loads) refuses a fork that
    # starts while another thread's is under way ("os.fork is unsafe while filelock
    # is changing descriptor ownership"): with two workers the cluster failed to
    # start with that error once, and hung in 2 of 80 runs of this test alone here
    # (filelock 4.3, Python 3.13); with one: 0 of 180.
    workers = 1 if method == "fork" else 2
    with (
        dask.config.set({"distributed.worker.multiprocessing-method": method}),
        distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
        smd.publish(client, data) as published,
    ):
        results = client.gather(client.map(read, [published] * 4, pure=False))
        assert {total for total, _, _ in results} == {float(data.sum())}
        assert len({pid for _, _, pid in results}) == workers


def test_retiring_one_of_two_threaded_workers_keeps_the_copy(data):
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
        smd.publish(client, data) as published,
    ):
        first, second = sorted(client.scheduler_info()["workers"])
        client.retire_workers([first], close_workers=True)
        assert segments(only_name(published))
        total, _, _ = client.submit(read, published, workers=[second], pure=False).result()
        assert total == float(data.sum())


def test_a_published_array_kept_by_dask_raises_released_error_after_release(client, data):
    published = smd.publish(client, data)
    [kept] = client.scatter([published], broadcast=True)
    assert client.submit(lambda p: float(p.as_array().sum()), kept).result() == data.sum()
    published.release()
    error = client.submit(lambda p: p.as_array(), kept, pure=False).exception(timeout=60)
    assert isinstance(error, ReleasedError)
    del kept
