"""Ray: a registered handle travels as its array, through Ray's object store."""

from __future__ import annotations

import contextlib
import gc
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import shared_memory_array.ray
from shared_memory_array import ClosedHandleError, SharedMemoryArray

ray = pytest.importorskip("ray")

DOCS = Path(__file__).resolve().parent.parent / "docs" / "ray.md"
# No usage reports; and Ray 2.51 (the last for Python 3.9) warns in ray.init without the second.
QUIET_RAY = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}

# Above Ray's limit for arguments inlined in the task (100 KiB): stored in the object store.
LARGE = np.arange(40_000.0).reshape(200, 200)


@ray.remote
def echo(array):
    return array


@ray.remote
def facts(array, refs):
    """What a task received: its type, its flags, and whether reads of the store share memory."""
    first, second = ray.get(refs[0]), ray.get(refs[0])
    return {
        "type": type(array),
        "writeable": array.flags.writeable,
        "owndata": array.flags.owndata,
        "two_reads_share_memory": np.shares_memory(first, second),
        "argument_shares_memory": np.shares_memory(array, first),
    }


@ray.remote
def make_and_return(data):
    """A worker that makes a handle and returns it (needs the worker's registration)."""
    return SharedMemoryArray.copy(None, data)


@ray.remote
def total(array):
    return float(np.asarray(array).sum())


@contextlib.contextmanager
def ray_own_files_unclosed() -> Iterator[None]:
    """Ignore ResourceWarnings for the files Ray leaves to the garbage collector.

    Ray 2.51 (the last for Python 3.9) starts and stops its processes with
    ``/dev/null`` files it never closes; only this module's fixture hides that.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        yield
        gc.collect()


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    """One local Ray for the module, started (and its fds opened) before tests count fds."""
    with pytest.MonkeyPatch.context() as patch, ray_own_files_unclosed():
        for name, value in QUIET_RAY.items():
            patch.setenv(name, value)
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="ERROR",
            runtime_env={"worker_process_setup_hook": "shared_memory_array.ray.register"},
        )
    try:
        shared_memory_array.ray.register()
        # Open what Ray keeps open for the session: its store mapping, the workers.
        ray.get([total.remote(ray.put(LARGE)) for _ in range(4)])
        yield
    finally:
        shared_memory_array.ray.deregister()
        with ray_own_files_unclosed():
            ray.shutdown()


@pytest.mark.parametrize(
    "data",
    [
        LARGE,
        np.arange(12.0).reshape(3, 4),
        np.asfortranarray(np.arange(12).reshape(3, 4)),
        np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "i4"), ("b", "f8")]),
        np.array(3.0),
        np.arange("2024-01-01", "2024-01-05", dtype="datetime64[D]"),
    ],
    ids=["large", "small", "fortran", "structured", "0-d", "datetime"],
)
def test_a_task_sees_the_same_values(data):
    with SharedMemoryArray.copy(None, data) as shared:
        received = ray.get(echo.remote(shared))
    assert received.dtype == data.dtype
    np.testing.assert_array_equal(received, data)


def test_what_a_task_receives_is_a_read_only_zero_copy_view_of_the_store():
    with SharedMemoryArray.copy(None, LARGE) as shared:
        ref = ray.put(shared)
    seen = ray.get(facts.remote(ref, [ref]))
    assert seen == {
        "type": np.ndarray,
        "writeable": False,
        "owndata": False,
        "two_reads_share_memory": True,
        "argument_shares_memory": True,
    }
    array = ray.get(ref)  # the driver too reads the store
    assert not array.flags.writeable
    assert np.shares_memory(array, ray.get(ref))


def test_the_handle_can_be_closed_once_its_data_is_put():
    shared = SharedMemoryArray.copy(None, LARGE)
    ref = ray.put(shared)
    shared.close()
    assert not os.path.exists(f"/dev/shm/{shared.name}")
    assert ray.get(total.remote(ref)) == LARGE.sum()
    np.testing.assert_array_equal(ray.get(ref), LARGE)


def test_a_closed_handle_cannot_be_put():
    shared = SharedMemoryArray.copy(None, LARGE)
    shared.close()
    with pytest.raises(ClosedHandleError):
        ray.put(shared)


@pytest.mark.parametrize(
    "key", [np.s_[2:5], np.s_[:, ::3], np.s_[::-2, 7]], ids=["rows", "strided", "reversed"]
)
def test_a_region_travels_as_that_region_still_read_only(key):
    with SharedMemoryArray.copy(None, LARGE) as shared:
        received = ray.get(echo.remote(shared[key]))
    np.testing.assert_array_equal(received, LARGE[key])
    assert not received.flags.writeable


def test_handles_inside_containers_travel_as_arrays():
    with SharedMemoryArray.copy(None, LARGE) as first, SharedMemoryArray.copy(None, 2.0) as second:
        received = ray.get(echo.remote({"first": first, "rest": [second]}))
    np.testing.assert_array_equal(received["first"], LARGE)
    assert received["rest"][0] == 2.0


def test_a_worker_registered_by_the_setup_hook_returns_handles_as_arrays():
    received = ray.get(make_and_return.remote(np.arange(5.0)))
    assert isinstance(received, np.ndarray)
    np.testing.assert_array_equal(received, np.arange(5.0))


def test_register_is_idempotent_and_deregister_restores_plain_handles():
    shared_memory_array.ray.register()
    shared_memory_array.ray.register()
    with SharedMemoryArray.copy(None, np.arange(4.0)) as shared:
        assert isinstance(ray.get(ray.put(shared)), np.ndarray)
        shared_memory_array.ray.deregister()  # once undoes both
        try:
            plain = ray.get(ray.put(shared))
            assert isinstance(plain, SharedMemoryArray)
            assert plain.name == shared.name
            assert not plain.owner
        finally:
            shared_memory_array.ray.register()
        plain.close()


def test_register_without_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.util", None)  # import ray.util raises ImportError
    with pytest.raises(ImportError, match=r"shared-memory-array\[ray\]"):
        shared_memory_array.ray.register()


def test_the_example_in_the_docs_runs_quietly(tmp_path):
    # Tagged ```py, not ```python: test_docs.py runs the latter where Ray may be missing.
    (example,) = re.findall(r"## Example\n\n```py\n(.*?)```", DOCS.read_text(), re.S)
    script = tmp_path / "example.py"
    script.write_text(example)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, **QUIET_RAY},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == "[59998.5 59999.5 60000.5]\n"
