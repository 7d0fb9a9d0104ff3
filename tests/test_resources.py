"""No file descriptor or mapping is kept per handle."""

from __future__ import annotations

import os
import pickle

from shared_memory_array import SharedMemoryArray


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _maps() -> list[str]:
    """This process's shared memory mappings (the heap may grow and shrink meanwhile)."""
    with open("/proc/self/maps") as maps:
        return [line for line in maps if "/dev/shm/" in line]


def test_a_handle_keeps_no_file_descriptor():
    with SharedMemoryArray.allocate(None, 10) as shared:
        before = _fd_count()
        handles = [SharedMemoryArray.attach(shared.name) for _ in range(50)]
        arrays = [handle.as_array() for handle in handles]
        assert _fd_count() == before
        del arrays
        for handle in handles:
            handle.close()


def test_thousand_attach_close_cycles_leave_fds_and_maps_as_they_were():
    with SharedMemoryArray.allocate(None, (100, 100)) as shared:
        payload = pickle.dumps(shared)
        fds, maps = _fd_count(), _maps()
        for _ in range(500):
            client = SharedMemoryArray.attach(shared.name)
            client.as_array()[0, 0] += 1
            client.close()
            unpickled = pickle.loads(payload)
            unpickled.as_array()[0, 1] += 1
            unpickled.close()
        assert _fd_count() == fds
        assert _maps() == maps
        assert shared.as_array()[0, :2].tolist() == [500, 500]
