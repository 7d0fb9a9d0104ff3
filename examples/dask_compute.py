"""Dask with process workers: tasks take the handle as a plain argument.

Works the same with `dask.compute(..., scheduler="processes")` and with a
`distributed.LocalCluster` of process workers on one machine.
"""

import dask
import numpy as np
from distributed import Client, LocalCluster

import shared_memory_array as sma


def block_sum(shared, start, stop):
    return float(shared.as_array()[start:stop].sum())


if __name__ == "__main__":
    data = np.random.default_rng(0).random((4000, 100))
    blocks = [(start, start + 1000) for start in range(0, 4000, 1000)]
    with sma.share(data) as shared:
        tasks = [dask.delayed(block_sum)(shared, a, b) for a, b in blocks]
        local = dask.compute(*tasks, scheduler="processes", num_workers=2)

        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            distributed = client.gather([client.submit(block_sum, shared, a, b) for a, b in blocks])

    assert np.isclose(sum(local), data.sum()) and np.isclose(sum(distributed), data.sum())
    print(f"total {sum(local):.2f} with the processes scheduler and with LocalCluster")
