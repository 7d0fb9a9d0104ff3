"""Finding this library's segments: who made them, who maps them, which are abandoned.

Linux only: it reads ``/dev/shm`` and ``/proc``.  Only segments owned by the
current user and carrying this library's header, or named as its drafts (see
``_namespace``), are ever listed or removed, so other users' and other programs'
shared memory is never touched.  Pids are judged only for segments from this
process's PID namespace: seen from another, they name other processes or none.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _layout, _names, _namespace, _segment
from ._errors import LayoutError, SegmentNotFoundError, SharedMemoryArrayError

__all__ = ["SegmentInfo", "clean_segments", "list_segments", "segment_info"]


@dataclass(frozen=True)
class SegmentInfo:
    """What is known about one of this library's segments.

    Attributes
    ----------
    name : str
        The segment's name, for `SharedMemoryArray.attach`.
    shape : tuple of int
        Shape of the array it holds.
    dtype : str
        Its dtype, as ``str(numpy.dtype)``.
    nbytes : int
        Size of the array in bytes.
    size : int
        Size of the segment (header included).
    committed : int
        Bytes of memory the segment holds now.
    creator_pid, keeper_pid : int
        The process that made it, and the one that will unlink it (the creator,
        or a ``SharedMemoryManager``'s server; 0 if unknown).
    creator_alive, keeper_alive : bool
        Whether those processes are running; meaningful only for segments from
        this PID namespace (see `same_pid_namespace`).
    mapped_by : list of int
        Processes that map the segment or hold it open now (those whose
        ``/proc/<pid>`` this user may read).
    pid_namespace : int
        The creator's PID namespace (the inode number of its ``/proc/<pid>/ns/pid``);
        0 if unknown: segments made by releases before format 2 record none.
    draft : bool
        Whether this is a draft: a segment still being made under a temporary name,
        or left half-made by a process killed meanwhile.  A draft's creator and
        namespace come from its name, its keeper is its creator, and its shape is
        ``()`` and dtype ``''`` until its header is written.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    size: int
    committed: int
    creator_pid: int
    creator_alive: bool
    keeper_pid: int
    keeper_alive: bool
    mapped_by: list[int] = field(default_factory=list)
    pid_namespace: int = 0
    draft: bool = False

    @property
    def same_pid_namespace(self) -> bool:
        """Whether its pids name processes of this one's PID namespace.

        Segments that record no namespace (made by releases before format 2) count
        as this namespace's, so that ``clean`` removes what they leave behind as
        it did before.
        """
        return self.pid_namespace in (0, _namespace.pid_namespace())

    @property
    def abandoned(self) -> bool:
        """Whether nobody will unlink it or uses it: its keeper is known and dead,
        its creator is dead, no process maps it or holds it open, and it comes from
        this PID namespace (from another, whether its processes live is unknown)."""
        return (
            self.keeper_pid != 0
            and not self.keeper_alive
            and not self.creator_alive
            and not self.mapped_by
            and self.same_pid_namespace
        )

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values, plus ``abandoned``."""
        return {**asdict(self), "shape": list(self.shape), "abandoned": self.abandoned}


def _require_linux() -> None:
    if not sys.platform.startswith("linux"):
        raise OSError(f"listing segments needs Linux's /dev/shm and /proc (this is {sys.platform})")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/status", "rb") as status_file:
            status = dict(line.split(b":", 1) for line in status_file if b":" in line)
    except (FileNotFoundError, ProcessLookupError):
        return False
    # /proc/<n> opens for a thread's id too, though only processes are listed: if
    # n now names a thread of another process, the process n once was is gone.
    process = status.get(b"Tgid", b"").strip() == str(pid).encode()
    state = status.get(b"State", b"").strip()[:1]
    return process and state not in (b"Z", b"X")  # a zombie holds no memory, does nothing


def _open(name: str) -> tuple[int, os.stat_result] | None:
    """Open segment ``name`` read-only if it is a regular file (never through a
    symlink, never blocking on a FIFO); None if that fails."""
    try:
        return _segment.open_file(name, writable=False)
    except OSError:
        return None


def _read(name: str, mappers: dict[str, list[int]]) -> SegmentInfo | None:
    """Describe segment ``name`` if it is this user's and this library's, else None."""
    draft = _namespace.parse_draft(name)
    opened = _open(name)
    if opened is None:
        return None
    fd, st = opened
    try:
        if st.st_uid != os.getuid():
            return None
        head = os.pread(fd, _layout.DATA_ALIGNMENT, 0)
        needed = _layout.header_length(head)
        if needed > len(head):
            head = os.pread(fd, needed, 0)
    finally:
        os.close(fd)
    try:
        layout = _layout.decode(head, st.st_size, name)
    except SharedMemoryArrayError:
        layout = None
    if draft is not None:  # its header may be missing or half written
        creator = keeper = draft.pid
        namespace = draft.pid_namespace
    elif layout is not None:
        creator, keeper, namespace = _layout.origin(head)
    else:
        return None
    return SegmentInfo(
        name=name,
        shape=() if layout is None else layout.shape,
        dtype="" if layout is None else str(layout.dtype),
        nbytes=0 if layout is None else layout.nbytes,
        size=st.st_size,
        committed=st.st_blocks * 512,
        creator_pid=creator,
        creator_alive=_alive(creator),
        keeper_pid=keeper,
        keeper_alive=_alive(keeper),
        mapped_by=sorted(mappers.get(name, [])),
        pid_namespace=namespace,
        draft=draft is not None,
    )


def list_segments() -> list[SegmentInfo]:
    """Return this user's segments made by this library, drafts included, sorted by name.

    Returns
    -------
    list[SegmentInfo]
        One description per segment; segments with a corrupt header are left out.

    Raises
    ------
    OSError
        Not on Linux.
    """
    _require_linux()
    mappers = _segment.holders()
    infos = (_read(name, mappers) for name in sorted(_segment.names()))
    return [info for info in infos if info is not None]


def segment_info(name: str) -> SegmentInfo:
    """Describe one segment.

    ``name`` may also be a draft's, as `list_segments` shows them.

    Parameters
    ----------
    name : str
        The segment's name.

    Returns
    -------
    SegmentInfo
        What is known about the segment.

    Raises
    ------
    OSError
        Not on Linux.
    SegmentNotFoundError
        No segment of that name.
    LayoutError
        It exists but is not this user's, or not made by this library.
    InvalidNameError
        ``name`` is neither a valid segment name nor a draft's.
    """
    _require_linux()
    if not _namespace.is_draft(name):
        _names.validate(name)
    if not _segment.exists(name):
        raise SegmentNotFoundError(f"no shared memory segment named {name!r}", segment=name)
    info = _read(name, _segment.holders())
    if info is None:
        raise LayoutError(
            f"segment {name!r} is not a shared-memory-array segment of this user", segment=name
        )
    return info


def clean_segments(dry_run: bool = False) -> list[SegmentInfo]:
    """Unlink this user's abandoned segments and drafts, and return them.

    A segment is abandoned when the process that made it and the process that was
    to unlink it (itself, or a manager's server) are both dead and no process maps
    it or holds it open: typically what a process killed with SIGKILL leaves behind
    when its resource tracker died with it, or a published array's copy on a host
    whose workers all crashed.  A draft (``.sma_draft_...``, a segment still being
    made) is abandoned when the process making it is dead and nobody maps it or
    holds it open: what a process killed while creating an array leaves.

    Segments of other users, or not made by this library, are never touched.
    Neither are segments made in another PID namespace, such as a container
    sharing ``/dev/shm`` with its host (``docker run --ipc=host``, the containers
    of a pod): their processes cannot be seen from here, so whether they live is
    unknown.  Run ``clean`` in the namespace that made them.  Segments from
    releases before the namespace was recorded are judged as if made here.

    Parameters
    ----------
    dry_run : bool, default False
        Only report what would be unlinked.

    Returns
    -------
    list[SegmentInfo]
        The segments unlinked, or with ``dry_run`` the abandoned segments that
        would be.  A segment found in use at the moment of unlinking (a Dask
        host copy held from another PID namespace, say) is left, and not listed.

    Raises
    ------
    OSError
        Not on Linux.
    """
    abandoned = [info for info in list_segments() if info.abandoned]
    if dry_run:
        return abandoned
    return [info for info in abandoned if _unlink_if_unheld(info.name)]


def clean_left_by(pids: Collection[int]) -> list[SegmentInfo]:
    """Unlink the abandoned segments and drafts that processes ``pids`` made, with
    generated names; return them.  What `clean_segments` does, for a pool's dead
    workers, reading only the names that carry their pids."""
    if not pids or not sys.platform.startswith("linux"):
        return []
    mine = []
    for name in _segment.names(memfd=False):  # a memfd is gone with its maker
        draft = _namespace.parse_draft(name)
        if (draft.pid if draft is not None else _names.maker(name)) in pids:
            mine.append(name)
    if not mine:
        return []
    mappers = _segment.holders()
    infos = (_read(name, mappers) for name in mine)
    return [
        info
        for info in infos
        if info is not None and info.abandoned and _unlink_if_unheld(info.name)
    ]


def _unlink_if_unheld(name: str) -> bool:
    """Unlink ``name`` unless a process holds it as a published copy."""
    # /proc shows only this PID namespace, and a worker may join meanwhile: the
    # holders' shared flock (see _hostcopy) is seen from any namespace, and holding
    # the exclusive lock while unlinking keeps new holders out until it is gone.
    opened = _open(name)
    if opened is None:
        return False
    fd, st = opened
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return _segment.Identity(st.st_dev, st.st_ino, st.st_size).same_mapping(
            _segment.identity(name)
        ) and _segment.unlink(name)
    finally:
        os.close(fd)
