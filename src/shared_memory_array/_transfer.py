"""Handing a segment to another process: the receiving side of `SharedMemoryArray.transfer`."""

from __future__ import annotations

import os

from . import _keepers, _layout, _names, _segment
from ._errors import SegmentNotFoundError
from ._segment import Identity


def _gone(name: str, why: str = "or its segment was removed") -> SegmentNotFoundError:
    return SegmentNotFoundError(
        f"shared array {name!r} was handed over with transfer() and has been received "
        f"already (a transferred handle can be unpickled once), {why}",
        segment=name,
    )


def claim(name: str, identity: Identity) -> str:
    """Make segment ``name`` this process's own and return its new name.

    The segment is renamed to a fresh name of this process: of two processes
    claiming it, exactly one succeeds (`SegmentNotFoundError` for the other).  Its
    header then names this process as its keeper, so that ``clean`` leaves it
    alone while this process lives, and this process's resource tracker unlinks it
    if the process is killed.

    A memfd segment cannot be renamed: this process opens it and names itself its
    keeper instead (see `_memfd.claim`), and its name here carries this process's
    descriptor.
    """
    if _segment.is_memfd(name):
        try:
            new = _segment.claim(name, identity)
        except SegmentNotFoundError as exc:  # the sender let go: received, or it gave up
            raise _gone(name, f"or its sender let go of it: {exc}") from None
        if new is None:
            raise _gone(name)
        return new
    if not identity.same_file(_segment.identity(name)):
        raise _gone(name)
    new = _names.generate()
    try:
        _segment.rename(name, new)
    except SegmentNotFoundError:
        raise _gone(name) from None
    try:
        fd, _ = _segment.open_file(new, writable=True)
        try:
            os.pwrite(fd, _layout.keeper_field(os.getpid()), _layout.KEEPER_OFFSET)
        finally:
            os.close(fd)
        _keepers.register_creator(new)
    except BaseException:
        _segment.unlink(new)  # ours now: nobody else would remove it
        raise
    return new
