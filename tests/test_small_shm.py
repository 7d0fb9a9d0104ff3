"""A full /dev/shm gives a clear exception at allocation, never SIGBUS later.

Each test runs in a private mount namespace with a 16 MiB tmpfs on /dev/shm; it
skips where namespaces or mounts are not allowed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from helpers import with_private_dev_shm

SIZE = 16 * 1024 * 1024
TESTS = os.path.dirname(os.path.abspath(__file__))  # where helpers.py lies


def run_in_small_shm(code: str, options: str = "size=16m") -> subprocess.CompletedProcess[str]:
    command = with_private_dev_shm(options, sys.executable, "-c", textwrap.dedent(code))
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module", autouse=True)
def _namespaces_allowed() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = run_in_small_shm("print('ok')")
    if probe.stdout.strip() != "ok":
        pytest.skip(f"cannot mount a private /dev/shm here: {probe.stderr.strip()}")


@pytest.mark.parametrize("how", ["allocate", "copy"])
def test_too_large_an_array_raises_naming_dev_shm_and_the_sizes(how):
    result = run_in_small_shm(
        f"""
        import os
        import numpy as np
        from shared_memory_array import OutOfSharedMemoryError, SharedMemoryArray
        try:
            if {how!r} == "allocate":
                SharedMemoryArray.allocate(None, (4, 1024, 1024), "f8", backend="named")
            else:
                SharedMemoryArray.copy(None, np.ones((4, 1024, 1024)), backend="named")
        except MemoryError as error:
            assert isinstance(error, OutOfSharedMemoryError) and isinstance(error, OSError)
            print(error)
            print(error.requested, error.available)
        print(sorted(os.listdir("/dev/shm")))
        """
    )
    assert result.returncode == 0, result.stderr
    message, figures, left = result.stdout.splitlines()
    requested, available = map(int, figures.split())
    assert "/dev/shm" in message and str(requested) in message and str(available) in message
    assert requested > 32 * 1024 * 1024 and 0 < available <= SIZE
    assert left == "[]"  # no partial segment


def test_filling_dev_shm_raises_at_allocation_and_written_arrays_never_sigbus():
    result = run_in_small_shm(
        """
        import numpy as np
        from shared_memory_array import OutOfSharedMemoryError, SharedMemoryArray
        first = SharedMemoryArray.allocate(None, 10 * 1024 * 1024, "u1", backend="named")
        try:
            SharedMemoryArray.allocate(None, 10 * 1024 * 1024, "u1", backend="named")
        except OutOfSharedMemoryError:
            print("refused")
        first.as_array()[:] = 7  # every page was reserved up front
        print(int(first.as_array().sum()) == 7 * 10 * 1024 * 1024)
        first.close()
        """
    )
    assert result.returncode == 0, result.stderr  # SIGBUS would be -7
    assert result.stdout.split() == ["refused", "True"]
    assert result.stderr == ""


def test_attaching_a_sparse_foreign_segment_reserves_it():
    result = run_in_small_shm(
        """
        from multiprocessing import shared_memory
        from shared_memory_array import OutOfSharedMemoryError, SharedMemoryArray
        # SharedMemory only ftruncates: these segments promise more than /dev/shm holds.
        a = shared_memory.SharedMemory("test_1_a", create=True, size=10 * 1024 * 1024)
        b = shared_memory.SharedMemory("test_1_b", create=True, size=10 * 1024 * 1024)
        first = SharedMemoryArray.attach("test_1_a", (10 * 1024 * 1024,), "u1")
        try:
            SharedMemoryArray.attach("test_1_b", (10 * 1024 * 1024,), "u1")
        except OutOfSharedMemoryError as error:
            print("refused", error.segment)
        first.as_array()[:] = 1
        print(int(first.as_array().sum()))
        first.close()
        for segment in (a, b):
            segment.close()
            segment.unlink()
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["refused", "test_1_b", str(10 * 1024 * 1024)]


def test_publishing_more_than_dev_shm_holds_raises_and_leaves_nothing():
    pytest.importorskip("distributed", reason="distributed is an optional test dependency")
    result = run_in_small_shm(
        """
        import os
        import numpy as np
        from distributed import Client, LocalCluster
        from shared_memory_array import OutOfSharedMemoryError
        from shared_memory_array.dask import publish

        def segments():  # multiprocessing's semaphores live in /dev/shm too
            return sorted(name for name in os.listdir("/dev/shm") if name.startswith("sma_"))

        if __name__ == "__main__":
            with (
                LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
                Client(cluster) as client,
            ):
                try:
                    publish(client, np.ones((4, 1024, 1024)))
                except OutOfSharedMemoryError as error:
                    print(type(error).__name__, error.requested)
                print(segments())
                with publish(client, np.ones((1024, 1024))) as published:  # 8 MiB fits
                    print(client.submit(lambda p: float(p.as_array().sum()), published).result())
            print(segments())
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("OutOfSharedMemoryError ")
    assert int(lines[0].split()[1]) > 32 * 1024 * 1024
    assert lines[1:] == ["[]", str(float(1024 * 1024)), "[]"]


def test_read_only_attach_of_a_sparse_foreign_segment_in_a_full_dev_shm_is_refused():
    """tmpfs allocates a page even to read a hole: reading it then would SIGBUS."""
    result = run_in_small_shm(
        """
        import os
        from multiprocessing import shared_memory, resource_tracker
        import numpy as np
        from shared_memory_array import OutOfSharedMemoryError, SharedMemoryArray
        raw = shared_memory.SharedMemory("test_0_sparse", create=True, size=8 << 20)
        resource_tracker.unregister(raw._name, "shared_memory")  # this test unlinks it
        with open("/dev/shm/test_0_filler", "wb") as filler:  # fill /dev/shm
            try:
                while True:
                    filler.write(bytes(1 << 20))
                    filler.flush()
            except OSError:
                pass
        for readonly in (True, False):
            try:
                view = SharedMemoryArray.attach(raw.name, (1 << 20,), "f8", readonly=readonly)
                print(float(view.as_array().sum()))
            except OutOfSharedMemoryError as error:
                print(type(error).__name__, raw.name in str(error))
        raw.close()
        raw.unlink()
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["OutOfSharedMemoryError True"] * 2


def test_a_dev_shm_out_of_inodes_is_out_of_shared_memory():
    result = run_in_small_shm(
        """
        import numpy as np
        from shared_memory_array import OutOfSharedMemoryError, SharedMemoryArray
        kept = []
        try:
            while True:
                kept.append(SharedMemoryArray.allocate(None, 1, backend="named"))
        except OutOfSharedMemoryError as error:
            print(len(kept) > 0, error.segment is not None)
        for handle in kept:
            handle.close()
        """,
        options="size=16m,nr_inodes=20",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_drop_in_executors_send_large_arguments_and_results_through_memfd(method):
    # Arguments: a memfd segment the parent owns.  Results: a memfd segment the
    # worker holds until the parent has taken it; the parent's array maps it.
    result = run_in_small_shm(
        f"""
        import multiprocessing, os, sys
        sys.path.insert(0, {TESTS!r})
        import numpy as np
        from helpers import in_memfd, memfd_labels, settled_memfd_labels, twice_and_where
        from shared_memory_array import Pool, ProcessPoolExecutor

        if __name__ == "__main__":
            context = multiprocessing.get_context({method!r})
            large = np.ones(3 << 20)  # 24 MiB: no room in a 16 MiB /dev/shm
            small = np.ones(1 << 18)  # 2 MiB: no room once a margin is kept
            tiny = np.ones(1 << 16)  # 512 KiB: below min_bytes, pickled
            with ProcessPoolExecutor(1, mp_context=context) as executor:
                doubled = list(executor.map(twice_and_where, [large, small, tiny]))
                print(executor.submit(settled_memfd_labels).result())  # the worker let go
            with Pool(1, context=context, maxtasksperchild=1) as pool:
                doubled += pool.map(twice_and_where, [large, small, tiny])
            print([(float(array.sum()), there, in_memfd(array)) for array, there in doubled])
            segments = [name for name in os.listdir("/dev/shm") if not name.startswith("sem.")]
            print(segments, memfd_labels())  # (a spawn pool's semaphores live there)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    large, small, tiny = 2.0 * (3 << 20), 2.0 * (1 << 18), 2.0 * (1 << 16)
    sent = [(large, True, True), (small, True, True), (tiny, False, False)]
    assert result.stdout.splitlines() == ["[]", str(sent + sent), "[] []"]
