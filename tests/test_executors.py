"""The handle works with the executors users have: multiprocessing, futures, joblib, Dask."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from helpers import row_total, row_total_packed, spool_files, write_row
from shared_memory_array import SharedMemoryArray


@pytest.fixture
def data():
    return np.arange(40.0).reshape(8, 5)


@pytest.fixture
def shared(data):
    with SharedMemoryArray.copy(None, data) as handle:
        yield handle


def test_pool_map_imap_imap_unordered_starmap_and_apply_async(context, data, shared):
    expected = data.sum(axis=1).tolist()
    tasks = [(shared, row) for row in range(8)]
    with context.Pool(2) as pool:
        assert pool.map(row_total_packed, tasks) == expected
        assert pool.map(row_total_packed, tasks, chunksize=3) == expected
        assert list(pool.imap(row_total_packed, tasks)) == expected
        assert sorted(pool.imap_unordered(row_total_packed, tasks)) == sorted(expected)
        assert pool.starmap(row_total, tasks) == expected
        results = [pool.apply_async(row_total, task) for task in tasks]
        assert [result.get(timeout=60) for result in results] == expected


def test_process_target_writes_in_place(context):
    with SharedMemoryArray.allocate(None, (3, 4)) as shared:
        children = [context.Process(target=write_row, args=(shared, row)) for row in range(3)]
        for child in children:
            child.start()
        for child in children:
            child.join(60)
            assert child.exitcode == 0
        assert shared.as_array()[:, 0].tolist() == [0.0, 1.0, 2.0]


def test_process_pool_executor_writes_in_place(context):
    with SharedMemoryArray.allocate(None, (4, 4)) as shared:
        with ProcessPoolExecutor(2, mp_context=context) as pool:
            list(pool.map(write_row, [shared] * 4, range(4)))
        assert shared.as_array()[:, -1].tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_joblib_parallel_passes_the_handle_without_dumping_a_copy(backend, data, shared, tmp_path):
    joblib = pytest.importorskip("joblib", reason="joblib is an optional test dependency")
    with joblib.parallel_backend(backend, n_jobs=2):
        parallel = joblib.Parallel(max_nbytes=1, temp_folder=str(tmp_path))
        totals = parallel(joblib.delayed(row_total)(shared, row) for row in range(8))
        # joblib memmaps ndarray arguments larger than max_nbytes; a handle is not one
        spooled = parallel(joblib.delayed(spool_files)(shared, str(tmp_path)) for _ in range(2))
    assert totals == data.sum(axis=1).tolist()
    assert spooled == [[], []]
    if backend == "loky":
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)


def test_dask_processes_scheduler(data, shared):
    dask = pytest.importorskip("dask", reason="dask is an optional test dependency")
    tasks = [dask.delayed(row_total)(shared, row) for row in range(8)]
    assert list(dask.compute(*tasks, scheduler="processes", num_workers=2)) == (
        data.sum(axis=1).tolist()
    )


def test_dask_distributed_local_cluster(data, shared):
    distributed = pytest.importorskip(
        "distributed", reason="distributed is an optional test dependency"
    )
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        futures = client.map(row_total, [shared] * 8, range(8))
        assert client.gather(futures) == data.sum(axis=1).tolist()
        client.submit(write_row, shared, 0).result()
    assert shared.as_array()[0].tolist() == [0.0] * 5
