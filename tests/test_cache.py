"""The per-process attach cache: one mapping per segment, never stale, released on demand."""

from __future__ import annotations

import os
import pickle
from multiprocessing import shared_memory

import numpy as np
import pytest

import helpers
from shared_memory_array import SharedMemoryArray, _cache, _posix, release_cached_mappings


def mappings_of(name: str) -> int:
    with open("/proc/self/maps") as maps:
        return sum(name in line for line in maps)


def address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def test_attach_and_unpickle_reuse_this_process_mapping():
    with SharedMemoryArray.allocate(None, 100) as owner:
        assert mappings_of(owner.name) == 1
        attached = SharedMemoryArray.attach(owner.name)
        unpickled = pickle.loads(pickle.dumps(owner))
        for handle in (attached, unpickled):
            assert address(handle.as_array()) == address(owner.as_array())
        assert mappings_of(owner.name) == 1
        attached.close()
        unpickled.close()


def test_a_name_made_again_is_a_new_segment_never_a_stale_mapping():
    first = SharedMemoryArray.copy(None, np.ones(10))
    name = first.name
    client = SharedMemoryArray.attach(name)
    assert client.as_array().sum() == 10
    first.close()
    with SharedMemoryArray.copy(None, np.full(10, 2.0), name=name) as second:
        again = SharedMemoryArray.attach(name)
        assert again.as_array().sum() == 20
        assert pickle.loads(pickle.dumps(second)).as_array().sum() == 20
        again.close()
    assert client.as_array().sum() == 10  # the old handle keeps the old memory
    client.close()


def test_mapping_of_an_unlinked_segment_is_dropped_by_the_next_attach():
    raw = shared_memory.SharedMemory(helpers.raw_name(), create=True, size=4096)
    try:
        SharedMemoryArray.attach(raw.name, (512,), "f8")  # garbage collected, not closed
        assert mappings_of(raw.name) == 2  # the stdlib's own mapping and our cached one
    finally:
        raw.unlink()
    with SharedMemoryArray.allocate(None, 1) as other:
        SharedMemoryArray.attach(other.name).close()
    assert mappings_of(raw.name) == 1
    raw.close()


def test_release_cached_mappings_drops_mappings_nothing_uses():
    raw = shared_memory.SharedMemory(helpers.raw_name(), create=True, size=4096)
    try:
        client = SharedMemoryArray.attach(raw.name, (512,), "f8")
        view = client.as_array()
        del client  # garbage collected, not closed: the cache keeps the mapping
        assert release_cached_mappings() >= 1
        assert mappings_of(raw.name) == 2  # the view still uses it
        del view
        assert mappings_of(raw.name) == 1
    finally:
        raw.close()
        raw.unlink()


def test_the_cache_is_bounded():
    owners = [SharedMemoryArray.allocate(None, 1) for _ in range(_cache.MAX_ENTRIES + 5)]
    assert len(_cache._entries) <= _cache.MAX_ENTRIES
    for owner in owners:
        owner.close()
    assert not any(owner.name in {name for name, _ in _cache._entries} for owner in owners)


def test_a_garbage_collected_owner_leaves_no_cached_mapping():
    import gc

    owner = SharedMemoryArray.allocate(None, 1000)
    name = owner.name
    del owner
    gc.collect()
    assert mappings_of(name) == 0


def test_unlinked_mappings_are_dropped_once_dev_shm_settles_too():
    """The check of other entries is skipped only while /dev/shm is unchanged."""
    import time

    raw = shared_memory.SharedMemory(helpers.raw_name(), create=True, size=4096)
    with SharedMemoryArray.allocate(None, 1) as other:
        payload = pickle.dumps(other)
        SharedMemoryArray.attach(raw.name, (512,), "f8")  # garbage collected: still cached
        time.sleep(0.2)  # past the window where directory timestamps are not trusted
        pickle.loads(payload).as_array()  # everything checked: /dev/shm state recorded
        pickle.loads(payload).as_array()  # nothing changed: no check
        assert mappings_of(raw.name) == 2
        raw.unlink()
        time.sleep(0.2)
        pickle.loads(payload).as_array()  # /dev/shm changed: the unlinked one goes
        assert mappings_of(raw.name) == 1
    raw.close()


def test_many_cached_segments_keep_a_warm_attach_cheap():
    """With nothing unlinked, a warm attach makes no system call per cached segment."""
    from unittest import mock

    owners = [SharedMemoryArray.allocate(None, 1) for _ in range(10)]
    try:
        payload = pickle.dumps(owners[0])
        # /dev/shm unchanged, whatever other programs do there meanwhile.
        with mock.patch.object(_cache._segment, "directory_state", return_value=(1, 2, 3)):
            pickle.loads(payload).as_array()  # checks the cached segments once
            with mock.patch.object(_cache._segment, "identity", side_effect=AssertionError):
                pickle.loads(payload).as_array()
    finally:
        for owner in owners:
            owner.close()


def test_a_pool_workers_repeated_attach_checks_the_other_segments_only_now_and_then():
    """A pickled handle's attach between checks makes no system call (issue 13)."""
    from unittest import mock

    with (
        SharedMemoryArray.allocate(None, 1) as first,
        SharedMemoryArray.allocate(None, 1) as second,
        mock.patch.object(_cache, "CHECK_SECONDS", 3600.0),
    ):
        payload = pickle.dumps(first)
        SharedMemoryArray.attach(second.name).close()  # a check: both still there
        with (
            mock.patch.object(_cache._segment, "directory_state", side_effect=AssertionError),
            mock.patch.object(_cache._segment, "identity", side_effect=AssertionError),
        ):
            for _ in range(3):
                assert pickle.loads(payload).as_array().tolist() == [0.0]
        # then, the window past, a check
        with (
            mock.patch.object(_cache, "CHECK_SECONDS", 0.0),
            mock.patch.object(_cache._segment, "directory_state", return_value=None) as state,
        ):
            pickle.loads(payload).as_array()
        assert state.called
        # an attach by name checks them all, whenever it comes
        with mock.patch.object(_cache._segment, "directory_state", return_value=None) as state:
            SharedMemoryArray.attach(second.name).close()
        assert state.called


def test_copies_of_one_pickle_start_from_what_the_first_found_and_refuse_a_new_segment():
    from shared_memory_array import SegmentNotFoundError

    owner = SharedMemoryArray.copy(None, np.arange(6.0))
    name, payload = owner.name, pickle.dumps(owner)
    first = pickle.loads(payload)
    assert first.as_array().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    second = pickle.loads(payload)
    assert second._spec is first._spec  # checked against the header once (issue 13)
    assert second.as_array().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    owner.close()
    with (
        SharedMemoryArray.copy(None, np.ones(3), name=name),
        pytest.raises(SegmentNotFoundError, match="unlinked"),
    ):
        pickle.loads(payload).as_array()
    first.close()
    second.close()


def test_a_pickled_handle_is_served_its_mapping_even_after_unlink_then_it_goes():
    import time

    with (
        SharedMemoryArray.allocate(None, 1) as other,
        SharedMemoryArray.copy(None, np.arange(3)) as gone,
    ):
        payload, name = pickle.dumps(gone), gone.name
        SharedMemoryArray.attach(other.name).close()  # two segments cached
        os.unlink(f"/dev/shm/{name}")  # unlinked behind the owner's back
        time.sleep(0.2)
        # the pickle names that very segment, still mapped here: it is served
        assert pickle.loads(payload).as_array().tolist() == [0, 1, 2]
        pickle.loads(pickle.dumps(other)).as_array()  # the next attach drops it
        assert (name, False) not in _cache._entries


def test_a_failed_attach_keeps_no_mapping_alive_in_its_traceback():
    """Dask keeps an erred task's exception: its frames must not pin other mappings."""
    owner = SharedMemoryArray.allocate(None, 100)
    name = owner.name
    SharedMemoryArray.allocate(None, 1).close()  # /dev/shm changed: attach checks its entries
    foreign = pickle.loads(pickle.dumps(owner))
    foreign._spec = foreign._spec._replace(name=helpers.raw_name(), host="elsewhere:0")
    kept = []
    for failing in (lambda: SharedMemoryArray.attach(helpers.raw_name()), foreign.as_array):
        try:
            failing()
        except FileNotFoundError as exc:
            kept.append(exc)
    assert [type(exc).__name__ for exc in kept] == ["SegmentNotFoundError", "ForeignHostError"]
    owner.close()
    assert mappings_of(name) == 0


def test_closing_the_last_handle_unmaps_at_once():
    with SharedMemoryArray.allocate(None, 1000) as owner:
        name, payload = owner.name, pickle.dumps(owner)
        for _ in range(100):
            handle = pickle.loads(payload)
            handle.as_array()[:] += 1
            handle.close()
            attached = SharedMemoryArray.attach(name)
            region = attached[10:20]
            attached.as_array()[0] += 1
            attached.close()
            assert (name, False) in _cache._entries  # the owner still uses it
            region.close()
        assert owner.as_array()[0] == 200
    assert mappings_of(name) == 0


def test_an_explicit_close_lets_go_and_garbage_collection_keeps_the_mapping():
    raw = shared_memory.SharedMemory(helpers.raw_name(), create=True, size=4096)
    try:
        first = SharedMemoryArray.attach(raw.name, (512,), "f8")
        second = pickle.loads(pickle.dumps(first))
        view = second.as_array()
        del first  # garbage collected, not closed: a pool task's handle
        assert mappings_of(raw.name) == 2  # the stdlib's own mapping and our cached one
        second.close()  # the last live handle: the cache lets go
        assert (raw.name, False) not in _cache._entries
        assert mappings_of(raw.name) == 2  # the view still uses it
        del view
        assert mappings_of(raw.name) == 1
        readonly = SharedMemoryArray.attach(raw.name, (512,), "f8", readonly=True)
        del readonly
        assert (raw.name, True) in _cache._entries  # kept for the next task
    finally:
        release_cached_mappings()
        raw.close()
        raw.unlink()


def test_handles_a_worker_drops_without_closing_do_not_pile_up_in_the_cache():
    with SharedMemoryArray.allocate(None, 1000) as owner:
        payload = pickle.dumps(owner)
        for _ in range(10_000):  # a pool worker's tasks: unpickled, used, dropped
            pickle.loads(payload).as_array()
        users = _cache._entries[(owner.name, False)].users
        assert len([ref for ref in users if ref() is not None]) == 1  # the owner
        assert len(users) < 64


@pytest.mark.skipif(
    _posix._MMAP_KEEPS_NO_FD, reason="from Python 3.13, mmap.mmap unmaps: no records kept"
)
def test_mapping_and_unmapping_many_times_keeps_the_unmap_records_bounded():
    with SharedMemoryArray.allocate(None, 1000) as owner:
        for _ in range(2_000):
            release_cached_mappings()
            SharedMemoryArray.attach(owner.name).close()
    assert len(_posix._unmappers) < 256
