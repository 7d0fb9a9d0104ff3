"""Which PID namespace this process lives in, and the draft names that record it.

A pid means something only inside its PID namespace: a container sharing
``/dev/shm`` with its host (``docker --ipc=host``, a pod's containers) sees none
of the host's processes, and the host reads the container's pids as other
processes' numbers.  Segments and drafts therefore record their creator's
namespace, and ``clean`` judges only its own namespace's.

A *draft* is a segment still being filled: it is made under a draft name,
``.sma_draft_<pid namespace>_<pid>_<16 hex digits>`` (the namespace in decimal,
the pid of the process making it), and linked to its real name once complete.
A process killed meanwhile leaves its draft behind; the name alone says who made
it, since the draft may not hold a header yet.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
from typing import NamedTuple

DRAFT_PREFIX = ".sma_draft_"
_DRAFT = re.compile(r"\.sma_draft_(\d{1,20})_(\d{1,10})_[0-9a-f]{16}\Z")


@functools.cache
def pid_namespace() -> int:
    """Return the inode number of this process's PID namespace; 0 if unknown (not Linux)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


# A process changes namespace only through its children (after unshare or setns
# only those forked later live in the new one), so a child recomputes.
if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=pid_namespace.cache_clear)


class Draft(NamedTuple):
    """Who made a draft: the creator's PID namespace and pid."""

    pid_namespace: int
    pid: int


def draft_name() -> str:
    """Return a fresh draft name for a segment this process is about to make."""
    return f"{DRAFT_PREFIX}{pid_namespace()}_{os.getpid()}_{secrets.token_hex(8)}"


def parse_draft(name: str) -> Draft | None:
    """Return who made draft ``name``; ``None`` if ``name`` is not a draft name."""
    found = _DRAFT.match(name)
    if found is None:
        return None
    return Draft(int(found[1]), int(found[2]))


def is_draft(name: str) -> bool:
    """Whether ``name`` is a draft name (see `draft_name`)."""
    return parse_draft(name) is not None
