"""Analyse a large image tile by tile in parallel, with a progress bar if tqdm is installed."""

from multiprocessing import Pool

import numpy as np

from shared_memory_array import SharedMemoryArray

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional

    def tqdm(iterable, total=None, disable=None):
        return iterable


def process_tile(args):
    """Mean and standard deviation of one horizontal band; runs in a worker."""
    shared_img, y_start, y_end = args
    tile = shared_img.as_array()[y_start:y_end, :]
    return tile.mean(), tile.std()


def parallel_image_analysis(image, n_tiles=10):
    tile_height = image.shape[0] // n_tiles
    # No manager: the handle owns the segment and unlinks it when the block ends.
    with SharedMemoryArray.copy(None, image) as shared, Pool() as pool:
        tiles = [(shared, i * tile_height, (i + 1) * tile_height) for i in range(n_tiles)]
        # disable=None: a bar on a terminal, quiet when output goes to a file or pipe
        return list(tqdm(pool.imap(process_tile, tiles), total=n_tiles, disable=None))


if __name__ == "__main__":
    large_image = np.random.default_rng(0).random((2000, 2000))
    stats = parallel_image_analysis(large_image)
    assert np.isclose(np.mean([mean for mean, _ in stats]), large_image.mean())
    print(f"Processed {len(stats)} tiles")
