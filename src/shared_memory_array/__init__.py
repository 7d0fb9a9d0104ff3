"""Share one NumPy array between processes through shared memory, with zero copies.

>>> import numpy as np
>>> from shared_memory_array import SharedMemoryArray
>>> with SharedMemoryArray.copy(None, np.ones(4)) as shared:
...     float(shared.as_array().sum())
4.0
"""

from __future__ import annotations

from ._array import SharedMemoryArray, _rebuild, _receive, _unpack  # noqa: F401  (pickles name them here)
from ._cache import release_cached_mappings
from ._errors import (
    ClosedHandleError,
    ForeignHostError,
    FrozenSegmentError,
    InvalidNameError,
    LayoutError,
    LockTimeoutError,
    NotOwnerError,
    OutOfSharedMemoryError,
    ReleasedError,
    SegmentExistsError,
    SegmentNotFoundError,
    SharedMemoryArrayError,
    UnsupportedDtypeError,
    UntrustedSegmentError,
)
from ._functions import empty, share, zeros
from ._futures import ProcessPoolExecutor
from ._inspect import SegmentInfo, clean_segments, list_segments, segment_info
from ._lock import SegmentLock
from ._manager import SharedMemoryManager
from ._pool import Pool
from ._version import __version__

SharedArray = SharedMemoryArray
"""Alias of `SharedMemoryArray`, the name the published examples use."""

__all__ = [
    "ClosedHandleError",
    "ForeignHostError",
    "FrozenSegmentError",
    "InvalidNameError",
    "LayoutError",
    "LockTimeoutError",
    "NotOwnerError",
    "OutOfSharedMemoryError",
    "Pool",
    "ProcessPoolExecutor",
    "ReleasedError",
    "SegmentExistsError",
    "SegmentInfo",
    "SegmentLock",
    "SegmentNotFoundError",
    "SharedArray",
    "SharedMemoryArray",
    "SharedMemoryArrayError",
    "SharedMemoryManager",
    "UnsupportedDtypeError",
    "UntrustedSegmentError",
    "__version__",
    "clean_segments",
    "empty",
    "list_segments",
    "release_cached_mappings",
    "segment_info",
    "share",
    "zeros",
]

# Reprs, docs and pickles name the package, however the private modules move.
for _name in __all__:
    _public = globals()[_name]
    if isinstance(_public, type) or callable(_public):
        _public.__module__ = __name__
del _name, _public
