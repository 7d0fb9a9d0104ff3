"""Named shared memory segments, through this platform's backend (picked once, at import).

Both backends offer the same functions: ``create``, ``open_existing``, ``identity``,
``directory_state``, ``unlink`` and ``free_bytes``; a mapped segment is a
1-D ``uint8`` array whose lifetime keeps the mapping alive.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - untested, see docs/explanation.md
    from ._windows import (
        SHM_DIR,
        Bytes,
        Identity,
        create,
        directory_state,
        free_bytes,
        identity,
        open_existing,
        unlink,
    )
else:
    from ._posix import (
        SHM_DIR,
        Bytes,
        Identity,
        create,
        directory_state,
        free_bytes,
        identity,
        open_existing,
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
    "open_existing",
    "unlink",
]
