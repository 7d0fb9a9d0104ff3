"""Exceptions: builtin bases, the segment name, str, and a pickle round trip."""

from __future__ import annotations

import errno
import pickle

import pytest

from shared_memory_array import (
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
)

CASES = [
    (SegmentNotFoundError, (FileNotFoundError,), errno.ENOENT),
    (ForeignHostError, (SegmentNotFoundError, FileNotFoundError), errno.ENOENT),
    (ReleasedError, (SegmentNotFoundError, FileNotFoundError), errno.ENOENT),
    (SegmentExistsError, (FileExistsError,), errno.EEXIST),
    (NotOwnerError, (PermissionError,), errno.EPERM),
    (FrozenSegmentError, (PermissionError,), errno.EPERM),
    (OutOfSharedMemoryError, (OSError, MemoryError), errno.ENOSPC),
    (LockTimeoutError, (TimeoutError,), errno.ETIMEDOUT),
    (InvalidNameError, (ValueError,), None),
    (LayoutError, (ValueError,), None),
    (ClosedHandleError, (ValueError,), None),
    (UnsupportedDtypeError, (TypeError,), None),
]


@pytest.mark.parametrize(("cls", "bases", "code"), CASES)
def test_error_subclasses_builtins_names_the_segment_and_pickles(cls, bases, code):
    error = cls("segment 'sma_1_ab' went wrong", segment="sma_1_ab")
    assert isinstance(error, SharedMemoryArrayError)
    assert all(isinstance(error, base) for base in bases)
    assert str(error) == "segment 'sma_1_ab' went wrong"
    assert error.segment == "sma_1_ab"
    if code is not None:
        assert error.errno == code
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls
    assert (str(again), again.segment, repr(again)) == (str(error), error.segment, repr(error))
    if code is not None:
        assert again.errno == code


def test_out_of_memory_keeps_its_figures_through_pickle():
    error = OutOfSharedMemoryError("full", segment="s", requested=10, available=3)
    again = pickle.loads(pickle.dumps(error))
    assert (again.requested, again.available) == (10, 3)


def test_foreign_host_error_keeps_its_hosts_through_pickle():
    error = ForeignHostError("elsewhere", segment="s", host="b:1", hosts=("a:1",))
    again = pickle.loads(pickle.dumps(error))
    assert (again.host, again.hosts, again.segment) == ("b:1", ("a:1",), "s")
