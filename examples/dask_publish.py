"""Dask distributed: one shared copy of a lookup table per host, read by every task.

`client.scatter(table, broadcast=True)` would give each worker process its own copy;
`publish` puts one read-only copy in shared memory on each host running workers.
"""

import numpy as np
from distributed import Client, LocalCluster

from shared_memory_array.dask import publish


def embed(table, tokens):
    """Average the table rows of some tokens: a zero-copy read of this host's copy."""
    return table.as_array()[tokens].mean(axis=0)


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    table = rng.random((50_000, 64), dtype=np.float32)  # 12.8 MB, shared once per host
    batches = [rng.integers(0, len(table), size=32) for _ in range(200)]
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        with publish(client, table) as published:
            vectors = client.gather(client.map(embed, [published] * len(batches), batches))
            print(f"copies: {len(published.hosts)} for {len(client.run(lambda: 0))} workers")
        expected = np.stack([table[tokens].mean(axis=0) for tokens in batches])
    assert np.allclose(np.stack(vectors), expected)
    print(f"embedded {len(vectors)} batches")
