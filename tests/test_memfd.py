"""memfd segments: shared past a small /dev/shm, reachable while their creator lives, leak-free."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import memfd_labels, row_sum, run_python, total, with_private_dev_shm
from shared_memory_array import (
    FrozenSegmentError,
    InvalidNameError,
    NotOwnerError,
    SegmentNotFoundError,
    SharedMemoryArray,
    SharedMemoryManager,
    list_segments,
    segment_info,
    share,
)

pytestmark = pytest.mark.skipif(
    not hasattr(os, "memfd_create"), reason="memfd segments need Linux's memfd_create"
)


def _write_from_worker(handle: SharedMemoryArray[np.float64]) -> float:
    array = handle.as_array()
    array[0] = 42.0
    return float(array[1:].sum())


def test_workers_of_every_start_method_share_a_memfd_array_both_ways(context):
    with SharedMemoryArray.copy(None, np.arange(6.0), backend="memfd") as shared:
        assert shared.backend == "memfd"
        with context.Pool(2) as pool:
            assert pool.map(total, [shared, shared[2:], shared.as_readonly()]) == [15.0, 14.0, 15.0]
            assert pool.apply(_write_from_worker, (shared,)) == 15.0
        assert shared.as_array()[0] == 42.0


def test_a_separately_started_interpreter_attaches_by_name_and_writes_through():
    with SharedMemoryArray.copy(None, np.arange(5), backend="memfd") as shared:
        result = run_python(
            """
            import sys
            from shared_memory_array import SharedMemoryArray
            with SharedMemoryArray.attach(sys.argv[1]) as attached:
                print(attached.backend, attached.as_array().tolist())
                attached.as_array()[0] = 7
            """,
            shared.name,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split("\n")[0] == "memfd [0, 1, 2, 3, 4]"
        assert result.stderr == ""
        assert shared.as_array()[0] == 7


def test_the_owner_closing_keeps_views_and_refuses_new_attaches_saying_why():
    shared = SharedMemoryArray.copy(None, np.arange(3.0), backend="memfd")
    name, view = shared.name, shared.as_array()
    pickled = pickle.dumps(shared)
    shared.close()
    assert view.tolist() == [0.0, 1.0, 2.0]  # the mapping outlives the descriptor
    with pytest.raises(SegmentNotFoundError, match=f"{name}.*process {os.getpid()}, has closed it"):
        SharedMemoryArray.attach(name)
    with pytest.raises(SegmentNotFoundError):
        pickle.loads(pickled).as_array()
    assert memfd_labels() == []


def test_attach_after_the_creator_exited_is_segment_not_found():
    result = run_python(
        """
        import numpy as np
        from shared_memory_array import SharedMemoryArray
        print(SharedMemoryArray.copy(None, np.ones(4), backend="memfd").name)
        """
    )
    assert result.returncode == 0, result.stderr
    name = result.stdout.strip()
    with pytest.raises(SegmentNotFoundError, match="has exited"):
        SharedMemoryArray.attach(name)


def test_a_descriptor_number_taken_by_another_file_is_not_the_segment():
    with SharedMemoryArray.copy(None, np.ones(4), backend="memfd") as shared:
        pid, fd = os.getpid(), int(shared.name.split("_fd")[1].split("_")[0])
        other = f"sma_{pid}_fd{fd}_{'0' * 16}"  # the same place, another label
        with pytest.raises(SegmentNotFoundError, match="has closed it"):
            SharedMemoryArray.attach(other)


def test_a_memfd_still_being_written_cannot_be_attached():
    fd = os.memfd_create("sma_" + "ab" * 8, os.MFD_CLOEXEC)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 8192)  # no header yet: what a copy() looks like half way
        name = f"sma_{os.getpid()}_fd{fd}_{'ab' * 8}"
        with pytest.raises(SegmentNotFoundError, match="still being made"):
            SharedMemoryArray.attach(name)
    finally:
        os.close(fd)


def test_forked_children_close_the_owners_descriptors():
    with SharedMemoryArray.copy(None, np.ones(4), backend="memfd") as shared:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no descriptor of the parent's segment, still attachable
            try:
                attached = SharedMemoryArray.attach(shared.name)
                os.write(write, f"{len(memfd_labels())} {total(attached)}".encode())
                attached.close()
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as reader:
            assert reader.read() == "0 4.0"
        assert os.waitpid(pid, 0)[1] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_another_user_cannot_attach():
    with SharedMemoryArray.copy(None, np.ones(4), backend="memfd") as shared:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child becomes another user, then tries
            try:
                os.setgid(65534)
                os.setuid(65534)
                try:
                    SharedMemoryArray.attach(shared.name)
                except PermissionError as error:
                    os.write(write, f"refused: {error}".encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as reader:
            said = reader.read()
        assert os.waitpid(pid, 0)[1] == 0
    assert said.startswith("refused:") and "another user" in said


def _attach_writable(name: str) -> str:
    try:
        SharedMemoryArray.attach(name).as_array()
    except FrozenSegmentError as error:
        return f"frozen: {error}"
    return "writable"


def _read_only_sum(handle: SharedMemoryArray[np.float64]) -> tuple[float, bool]:
    array = handle.as_array()
    return float(array.sum()), bool(array.flags.writeable)


def test_frozen_arrays_refuse_writable_mappings_in_every_process(context):
    with SharedMemoryArray.copy(None, np.arange(4.0), backend="memfd") as shared:
        shared.freeze()
        assert shared.readonly and not shared.as_array().flags.writeable
        with pytest.raises(FrozenSegmentError, match="frozen"):
            SharedMemoryArray.attach(shared.name)
        with context.Pool(1) as pool:
            refused = pool.apply(_attach_writable, (shared.name,))
            read = pool.apply(_read_only_sum, (shared,))  # pickled read-only since frozen
        assert refused.startswith(f"frozen: memfd segment {shared.name!r} is frozen")
        assert read == (6.0, False)
        readonly = SharedMemoryArray.attach(shared.name, readonly=True)
        assert readonly.as_array().tolist() == [0.0, 1.0, 2.0, 3.0]
        readonly.close()


def test_only_the_owner_of_a_memfd_segment_freezes_it():
    with (
        SharedMemoryArray.copy(None, np.ones(2)) as named,
        pytest.raises(OSError, match="named segment, which cannot be sealed"),
    ):
        named.freeze()
    with SharedMemoryArray.copy(None, np.ones(2), backend="memfd") as shared:
        attached = SharedMemoryArray.attach(shared.name)
        with pytest.raises(NotOwnerError):
            attached.freeze()
        attached.close()


def test_memfd_takes_no_chosen_name_and_no_manager():
    with pytest.raises(InvalidNameError, match="take no chosen name"):
        SharedMemoryArray.allocate(None, 3, name="mine", backend="memfd")
    with pytest.raises(InvalidNameError, match="form of a memfd segment"):
        SharedMemoryArray.allocate(None, 3, name=f"sma_1_fd3_{'0' * 16}")
    with SharedMemoryManager() as manager:
        with pytest.raises(TypeError, match="cannot keep a memfd segment"):
            SharedMemoryArray.allocate(manager, 3, backend="memfd")
        with SharedMemoryArray.allocate(manager, 3) as kept:
            assert kept.backend == "named"


def test_the_keyword_and_the_environment_variable_choose_the_backend(monkeypatch):
    monkeypatch.setenv("SHARED_MEMORY_ARRAY_BACKEND", "memfd")
    with share(np.ones(3)) as from_environment, share(np.ones(3), backend="named") as named:
        assert (from_environment.backend, named.backend) == ("memfd", "named")
    with share(np.ones(3), name=f"test_{os.getpid()}_chosen") as chosen:
        assert chosen.backend == "named"  # a chosen name is a named segment
    monkeypatch.setenv("SHARED_MEMORY_ARRAY_BACKEND", "disk")
    with pytest.raises(ValueError, match="SHARED_MEMORY_ARRAY_BACKEND must be one of"):
        share(np.ones(3))
    with pytest.raises(ValueError, match="backend must be one of"):
        share(np.ones(3), backend="tmpfs")  # type: ignore[arg-type]
    monkeypatch.delenv("SHARED_MEMORY_ARRAY_BACKEND")
    with share(np.ones(3)) as small:
        assert small.backend == "named"  # /dev/shm has room: named by default


def test_list_and_info_show_memfd_segments_with_their_holders():
    with SharedMemoryArray.copy(None, np.ones((2, 3)), backend="memfd") as shared:
        fd = shared.name.split("_")[2][2:]  # sma_<pid>_fd<n>_<hex>
        assert os.stat(f"/proc/self/fd/{fd}").st_mode & 0o777 == 0o600  # memfds start 0777
        listed = {info.name: info for info in list_segments()}
        assert shared.name in listed
        info = segment_info(shared.name)
        assert (info.shape, info.creator_pid, info.mapped_by) == (
            (2, 3),
            os.getpid(),
            [os.getpid()],
        )
    assert shared.name not in {info.name for info in list_segments()}


_CREATOR = """
import os, sys
import multiprocessing
import numpy as np
from shared_memory_array import segment_info, share

def read(handle):
    return float(handle.as_array()[::4096].sum()), os.getpid()

if __name__ == "__main__":
    data = np.ones(1 << 27)  # 1 GiB of float64
    shared = share(data)  # the default API: no room in a 64 MiB /dev/shm, so memfd
    del data
    pool = multiprocessing.get_context("spawn").Pool(4)
    results = pool.map(read, [shared] * 4, chunksize=1)  # each keeps its mapping cached
    committed = segment_info(shared.name).committed >= 1 << 30
    print(shared.backend, sorted({value for value, _ in results}), committed, flush=True)
    print(" ".join(str(child.pid) for child in multiprocessing.active_children()), flush=True)
    sys.stdin.readline()  # killed while it waits
"""

_WATCHER = """
import os, signal, subprocess, sys, time

# Shmem charged to a memory cgroup of the creator's own, not the machine's, which
# other programs (the other suite CI runs beside this one) change meanwhile.
cgroup = sys.argv[2]
with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
    procs.write(str(os.getpid()))  # the creator and its workers start in it too

def shmem():
    with open(os.path.join(cgroup, "memory.stat")) as stat:
        for line in stat:
            key, value = line.split()
            if key == "shmem":
                return int(value)

creator = subprocess.Popen(
    [sys.executable, sys.argv[1]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
)
print(creator.stdout.readline().strip())
workers = [int(pid) for pid in creator.stdout.readline().split()]
alive = shmem()
for pid in [creator.pid, *workers]:
    os.kill(pid, signal.SIGKILL)
creator.wait()
deadline = time.monotonic() + 10  # killed workers are reaped by init, not by us
while any(os.path.exists(f"/proc/{pid}") for pid in workers) and time.monotonic() < deadline:
    time.sleep(0.05)
print(len(workers), alive >= 1 << 30, shmem() < 64 << 20, os.listdir("/dev/shm"))
"""


def test_a_gib_shared_past_a_64_mib_dev_shm_is_freed_when_everyone_is_killed(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    creator = tmp_path / "creator.py"  # a file: spawn workers import their functions from it
    creator.write_text(_CREATOR)
    cgroup = _memory_cgroup(f"sma_gib_{os.getpid()}", None)
    if cgroup is None:
        pytest.skip("cannot make a memory cgroup here, to measure the memory by")
    command = with_private_dev_shm("size=64m", sys.executable, "-c", _WATCHER, str(creator), cgroup)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    finally:
        os.rmdir(cgroup)
    if result.returncode != 0 and "mount" in result.stderr and not result.stdout:
        pytest.skip(f"cannot mount a private /dev/shm here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["memfd [32768.0] True", "4 True True []"]


def test_memfd_segments_are_never_given_to_the_resource_tracker():
    # The kernel frees them with their last user: nothing for a tracker to do.
    result = run_python(
        """
        import numpy as np
        from multiprocessing import resource_tracker
        from shared_memory_array import SharedMemoryArray
        sent = []
        resource_tracker._resource_tracker._send = lambda *args: sent.append(args)
        SharedMemoryArray.copy(None, np.ones(3), backend="memfd").close()
        print(sent)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_joblib_and_dask_tasks_read_a_memfd_array():
    joblib = pytest.importorskip("joblib", reason="joblib is an optional test dependency")
    dask = pytest.importorskip("dask", reason="dask is an optional test dependency")
    distributed = pytest.importorskip("distributed", reason="an optional test dependency")
    data = np.arange(40.0).reshape(8, 5)
    expected = data.sum(axis=1).tolist()
    with SharedMemoryArray.copy(None, data, backend="memfd") as shared:
        tasks = [(shared, row) for row in range(8)]
        with joblib.parallel_backend("loky", n_jobs=2):
            assert joblib.Parallel()(joblib.delayed(row_sum)(task) for task in tasks) == expected
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
        delayed = [dask.delayed(row_sum)(task) for task in tasks]
        assert list(dask.compute(*delayed, scheduler="processes", num_workers=2)) == expected
        with (
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            assert client.gather(client.map(row_sum, tasks)) == expected


def test_running_out_of_descriptors_raises_the_soft_limit_then_a_clear_error():
    result = run_python(
        """
        import errno, resource
        import numpy as np
        from shared_memory_array import SharedMemoryArray
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 128))
        kept = []
        try:
            while True:
                kept.append(SharedMemoryArray.allocate(None, 1, backend="memfd"))
        except OSError as error:
            print(error.errno == errno.EMFILE, len(kept) > 64, "ulimit -Hn" in str(error))
        print(resource.getrlimit(resource.RLIMIT_NOFILE))
        for handle in kept:
            handle.close()
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["True True True", "(128, 128)"]


def _memory_cgroup(name: str, limit: int | None) -> str | None:
    """A new memory cgroup beside this process's own (``limit``: its memory limit);
    None if not allowed here."""
    from shared_memory_array import _memlimit

    for folder, files in _memlimit._folders():
        child = os.path.join(folder, name)
        try:
            os.mkdir(child)
        except OSError:
            continue
        try:
            if limit is not None:
                with open(os.path.join(child, files.limit), "w") as limited:
                    limited.write(str(limit))
            with open(os.path.join(child, "memory.stat")):
                pass
        except OSError:
            os.rmdir(child)
            continue
        return child
    return None


def test_a_container_at_its_memory_limit_gets_out_of_shared_memory_not_the_oom_killer():
    cgroup = _memory_cgroup(f"sma_test_{os.getpid()}", 64 << 20)
    if cgroup is None:
        pytest.skip("cannot make a memory cgroup here")
    try:
        result = run_python(
            """
            import os, sys
            import numpy as np
            from shared_memory_array import OutOfSharedMemoryError, SharedMemoryArray
            with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))
            for make in (
                lambda: SharedMemoryArray.allocate(None, 256 << 20, "u1", backend="memfd"),
                # a broadcast source takes no memory of its own: 256 MiB to copy
                lambda: SharedMemoryArray.copy(
                    None, np.broadcast_to(np.ones(1), (1 << 25,)), backend="memfd"
                ),
            ):
                try:
                    make()
                except OutOfSharedMemoryError as error:
                    print(error.requested >= 256 << 20, error.available < 64 << 20)
            with SharedMemoryArray.allocate(None, 8 << 20, "u1", backend="memfd") as fits:
                print(fits.as_array().sum())
            """,
            cgroup,
        )
    finally:
        os.rmdir(cgroup)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["True True", "True True", "0"]


def test_another_pid_namespace_is_told_to_use_named_segments():
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    code = textwrap.dedent(
        """
        import sys
        from shared_memory_array import SegmentNotFoundError, SharedMemoryArray
        try:
            SharedMemoryArray.attach(sys.argv[1])
        except SegmentNotFoundError as error:
            print(error)
        """
    )
    with SharedMemoryArray.copy(None, np.ones(4), backend="memfd") as shared:
        command = ["unshare", "-p", "-f", "--mount-proc", sys.executable, "-c", code, shared.name]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0 and not result.stdout:
        pytest.skip(f"cannot make a PID namespace here: {result.stderr.strip()}")
    assert "another PID namespace" in result.stdout
    assert "backend='named'" in result.stdout
