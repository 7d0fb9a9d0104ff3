"""Pass the handle to joblib.Parallel: workers read the shared array, nothing is dumped.

joblib memmaps large ndarray arguments by writing them to a file; a handle is not an
ndarray, so it travels as its ~100-byte pickle and no second copy is made.
"""

import numpy as np
from joblib import Parallel, delayed

import shared_memory_array as sma


def column_mean(shared, column):
    return float(shared.as_array()[:, column].mean())


if __name__ == "__main__":
    data = np.random.default_rng(0).random((2000, 50))
    with sma.share(data) as shared:
        means = Parallel(n_jobs=2)(delayed(column_mean)(shared, c) for c in range(50))
    assert np.allclose(means, data.mean(axis=0))
    print(f"{len(means)} column means, first {means[0]:.4f}")
