"""Named shared memory segments: the operating system layer every other module goes through.

POSIX only (Linux; macOS shares the code, untested): ``create``, ``open_existing``,
``open_file``, ``identity``, ``directory_state``, ``unlink`` and ``free_bytes``; a
mapped segment is a 1-D ``uint8`` array whose lifetime keeps the mapping alive.
Windows has no ``shm_open`` and is not supported (see docs/explanation.md).
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover
    raise ImportError(
        "shared-memory-array needs POSIX shared memory (Linux or macOS); Windows is not supported"
    )

from ._posix import (
    SHM_DIR,
    Bytes,
    Identity,
    create,
    directory_state,
    free_bytes,
    identity,
    names,
    open_existing,
    open_file,
    unlink,
)

__all__ = [
    "SHM_DIR",
    "Bytes",
    "Identity",
    "create",
    "directory_state",
    "free_bytes",
    "identity",
    "names",
    "open_existing",
    "open_file",
    "unlink",
]
