"""Sum the rows of a shared array in a multiprocessing.Pool (the published quick start)."""

from multiprocessing import Pool
from multiprocessing.managers import SharedMemoryManager

import numpy as np

from shared_memory_array import SharedMemoryArray


def sum_row(args):
    """Sum one row; runs in a worker process."""
    shared_array, row_idx = args
    return shared_array.as_array()[row_idx].sum()


def main():
    data = np.random.default_rng(0).random((1000, 1000))
    with SharedMemoryManager() as manager:
        shared = SharedMemoryArray.copy(manager, data)
        with Pool() as pool:
            results = pool.map(sum_row, [(shared, i) for i in range(1000)])
    assert np.isclose(sum(results), data.sum())
    print(f"Total sum: {sum(results):.2f}")


if __name__ == "__main__":
    main()
