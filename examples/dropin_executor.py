"""Plain arrays in and out of a process pool, through shared memory: change the import only.

shared_memory_array.ProcessPoolExecutor and shared_memory_array.Pool replace the standard
library's pools. Tasks take and return ordinary numpy.ndarray objects; the arrays of 1 MiB
or more travel through shared memory instead of being pickled.
"""

import numpy as np

from shared_memory_array import Pool, ProcessPoolExecutor


def normalise(tile):
    """Scale one tile to zero mean and unit standard deviation; runs in a worker."""
    tile -= tile.mean()  # the task's own copy-on-write view: the caller's tile is unchanged
    tile /= tile.std()
    return tile  # 2 MiB: comes back through shared memory


def smooth_band(image, start, stop):
    """Average each pixel of rows [start, stop) with its left and right neighbours."""
    band = image[start:stop]
    return (np.roll(band, 1, axis=1) + band + np.roll(band, -1, axis=1)) / 3


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    tiles = [rng.random((512, 512)) for _ in range(8)]  # 2 MiB each
    originals = [tile.copy() for tile in tiles]

    with ProcessPoolExecutor(max_workers=2) as executor:
        normalised = list(executor.map(normalise, tiles))
    for tile, original, result in zip(tiles, originals, normalised):
        assert np.array_equal(tile, original)  # the tasks' writes stayed in the tasks
        assert np.allclose(result, (original - original.mean()) / original.std())
    print(f"ProcessPoolExecutor: normalised {len(normalised)} tiles of {tiles[0].nbytes} bytes")

    image = rng.random((2048, 512))  # 8 MiB, copied into shared memory once for the call
    bands = [(image, start, start + 512) for start in range(0, len(image), 512)]
    with Pool(2) as pool:
        smoothed = np.concatenate(pool.starmap(smooth_band, bands))
    assert np.allclose(smoothed, smooth_band(image, 0, len(image)))
    print(f"Pool: smoothed a {image.shape[0]}x{image.shape[1]} image in {len(bands)} bands")
