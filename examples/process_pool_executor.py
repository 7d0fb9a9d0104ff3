"""Fill a shared array in place from a ProcessPoolExecutor: each task writes its own rows."""

from concurrent.futures import ProcessPoolExecutor

import numpy as np

from shared_memory_array import SharedMemoryArray


def fill_rows(shared, start, stop):
    """Write rows [start, stop); tasks write disjoint rows, so no lock is needed."""
    out = shared.as_array()
    for row in range(start, stop):
        out[row] = np.sqrt(np.arange(out.shape[1]) + row)


if __name__ == "__main__":
    rows, cols, step = 400, 1000, 50
    with SharedMemoryArray.allocate(None, (rows, cols), "float64") as shared:
        with ProcessPoolExecutor() as pool:
            futures = [
                pool.submit(fill_rows, shared, start, min(start + step, rows))
                for start in range(0, rows, step)
            ]
            for future in futures:
                future.result()
        expected = np.sqrt(np.arange(cols)[None, :] + np.arange(rows)[:, None])
        assert np.allclose(shared.as_array(), expected)
        print(f"filled {rows} rows in place")
