"""How much more memory this process's memory cgroups let it take (Linux).

Read before a memfd segment reserves its memory: reserving past a memory cgroup's
limit does not fail, it calls the OOM killer (tried here, cgroup v1 and Linux 6.18:
``posix_fallocate`` of a memfd in a 64 MiB cgroup got the process killed).  Memory
cgroups are what limit a container's memory, v1 and v2 alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

_NO_LIMIT = 1 << 60  # v1 writes "no limit" as a huge number


class _Files(NamedTuple):
    limit: str
    usage: str
    reclaimable: str  # the key in memory.stat of what the kernel can drop instead


_V1 = _Files("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
_V2 = _Files("memory.max", "memory.current", "inactive_file")

_levels_of: tuple[int, list[tuple[str, _Files]]] | None = None  # (pid, its cgroup folders)


def _mounts() -> dict[str, tuple[str, str]]:
    """Where the memory cgroup hierarchies are mounted: kind -> (root, mount point)."""
    found: dict[str, tuple[str, str]] = {}
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            if tail[0] == "cgroup2":
                found.setdefault("v2", (fields[3], fields[4]))
            elif tail[0] == "cgroup" and "memory" in tail[2].split(","):
                found.setdefault("v1", (fields[3], fields[4]))
    return found


def _folders() -> Iterator[tuple[str, _Files]]:
    """This process's memory cgroup folders, from its own up to the mount's root."""
    mounts = _mounts()
    with open("/proc/self/cgroup") as cgroups:
        for line in cgroups:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers == "" and "v2" in mounts:
                (root, top), files = mounts["v2"], _V2
            elif "memory" in controllers.split(",") and "v1" in mounts:
                (root, top), files = mounts["v1"], _V1
            else:
                continue
            if root != "/" and path.startswith(root):
                path = path[len(root) :]
            folder = os.path.normpath(top + "/" + path)
            while folder.startswith(top):
                yield folder, files
                if folder == top:
                    break
                folder = os.path.dirname(folder)


def _read(path: str) -> int | None:
    with open(path) as file:
        text = file.read().strip()
    return None if text == "max" else int(text)


def _reclaimable(folder: str, key: str) -> int:
    with open(f"{folder}/memory.stat") as stat:
        for line in stat:
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def room() -> int | None:
    """Bytes this process may still take before a memory cgroup's limit; None: no limit.

    What each limited level allows, less what it uses, plus its inactive file cache
    (which the kernel drops before it kills); the smallest of them.
    """
    global _levels_of
    if _levels_of is None or _levels_of[0] != os.getpid():
        try:
            _levels_of = (os.getpid(), list(_folders()))
        except OSError:  # no /proc: nothing to go by
            _levels_of = (os.getpid(), [])
    least: int | None = None
    for folder, files in _levels_of[1]:
        try:
            limit = _read(f"{folder}/{files.limit}")
            if limit is None or limit >= _NO_LIMIT:
                continue
            usage = _read(f"{folder}/{files.usage}") or 0
            left = limit - usage + _reclaimable(folder, files.reclaimable)
        except (OSError, ValueError):  # not this controller's folder, or gone
            continue
        least = left if least is None else min(least, left)
    return least
