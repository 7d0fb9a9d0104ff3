"""Hand a segment to a separately started interpreter by name alone.

The other process finds shape and dtype in the segment itself, writes into it, and
exits; its exit does not destroy the owner's data (with raw
multiprocessing.shared_memory before Python 3.13 it would).
"""

import subprocess
import sys

import numpy as np

from shared_memory_array import SharedMemoryArray

WORKER = """
import sys
from shared_memory_array import SharedMemoryArray
shared = SharedMemoryArray.attach(sys.argv[1])
values = shared.as_array()
values *= 2
print(f"worker saw shape {shared.shape}, dtype {shared.dtype}")
"""

if __name__ == "__main__":
    with SharedMemoryArray.copy(None, np.arange(6.0).reshape(2, 3)) as shared:
        subprocess.run([sys.executable, "-c", WORKER, shared.name], check=True)
        assert shared.as_array().tolist() == [[0, 2, 4], [6, 8, 10]]
        print("owner sees the worker's writes:", shared.as_array().tolist())
