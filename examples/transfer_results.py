"""Arrays whose size only the worker knows: made in a worker and handed back with transfer().

Each task makes a shared array without a manager, fills it, and returns
out.transfer(): the parent receives owner handles, passes them to more tasks without
copying the arrays, and closes them when done. Linux only. It works the same with
memfd segments (what a container with a small /dev/shm gets; try it with
SHARED_MEMORY_ARRAY_BACKEND=memfd): each worker then keeps its array until the
parent has opened it.
"""

from multiprocessing import Pool

import numpy as np

from shared_memory_array import SharedMemoryArray


def random_walk(seed):
    """A 2-d random walk of random length, written straight into shared memory."""
    rng = np.random.default_rng(seed)
    steps = int(rng.integers(100_000, 200_000))  # known only here
    out = SharedMemoryArray.allocate(None, (steps, 2), "float64")
    walk = out.as_array()
    rng.standard_normal(out=walk)
    np.cumsum(walk, axis=0, out=walk)
    return out.transfer()  # the process that unpickles it becomes the owner


def farthest(walk):
    """How far the walk got from its start; runs in a worker, on the parent's segment."""
    return float(np.hypot(*walk.as_array().T).max())


def expected_walk(seed):
    rng = np.random.default_rng(seed)
    steps = int(rng.integers(100_000, 200_000))
    return np.cumsum(rng.standard_normal((steps, 2)), axis=0)


if __name__ == "__main__":
    seeds = range(6)
    with Pool(2) as pool:
        walks = pool.map(random_walk, seeds)
        distances = pool.map(farthest, walks)  # handles pickle by name: no copy
    steps = [walk.shape[0] for walk in walks]
    for seed, walk, distance in zip(seeds, walks, distances):
        assert walk.owner  # this process owns the segment now
        expected = expected_walk(seed)
        assert np.allclose(walk.as_array(), expected)
        assert np.isclose(distance, np.hypot(*expected.T).max())
        walk.close()  # the owner: removes the segment
    print(f"received {len(walks)} walks of {min(steps)} to {max(steps)} steps")
    print(f"farthest point from the start: {max(distances):.1f}")
