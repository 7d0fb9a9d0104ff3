"""Share an array larger than /dev/shm, frozen so that no worker can change it.

A memfd segment lives in memory that no /dev/shm mount limits (a container's 64 MB
default included) and goes away with the last process using it, even if every one of
them is killed. backend="memfd" asks for one; by default the library takes one by
itself when /dev/shm has no room. freeze() then seals it: no process can map it
writable again, so workers read it without copying and cannot corrupt it. Linux only.
"""

from concurrent.futures import ProcessPoolExecutor

import numpy as np

from shared_memory_array import FrozenSegmentError, SharedMemoryArray


def column_mean(table, column):
    """Runs in a worker: a zero-copy, read-only view of the parent's segment."""
    return float(table.as_array()[:, column].mean())


def try_to_write(name):
    """Runs in a worker: a writable attach of a frozen segment is refused."""
    try:
        SharedMemoryArray.attach(name)
    except FrozenSegmentError as error:
        return type(error).__name__
    return "attached writable"


def main():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((1_000_000, 8))  # 64 MB
    with SharedMemoryArray.copy(None, table, backend="memfd") as shared:
        shared.freeze()  # read-only from now on, in every process
        print(shared.backend, shared.readonly)
        with ProcessPoolExecutor(2) as executor:
            means = list(executor.map(column_mean, [shared] * 8, range(8)))
            refused = executor.submit(try_to_write, shared.name).result()
        assert np.allclose(means, table.mean(axis=0))
        print(refused, np.round(means, 3).tolist())


if __name__ == "__main__":
    main()
