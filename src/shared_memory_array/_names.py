"""Segment names: generation and validation."""

from __future__ import annotations

import os
import re
import secrets
import sys

from ._errors import InvalidNameError

PREFIX = "sma_"

# macOS limits POSIX shared memory names to PSHMNAMLEN (31) bytes including the
# leading slash; Linux allows NAME_MAX (255) in /dev/shm.
MAX_NAME_LENGTH = 30 if sys.platform == "darwin" else 255

_VALID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")


def generate() -> str:
    """Return a fresh name: ``sma_<creator pid>_<64 random bits>``, at most 28 characters."""
    return f"{PREFIX}{os.getpid()}_{secrets.token_hex(8)}"


_GENERATED = re.compile(rf"{PREFIX}(\d+)_[0-9a-f]{{16}}\Z")


def maker(name: str) -> int | None:
    """The pid in a name `generate` made (its creator's), else None."""
    found = _GENERATED.match(name)
    return None if found is None else int(found[1])


def validate(name: object) -> str:
    """Return ``name`` if it is a portable segment name, else raise `InvalidNameError`.

    Allowed: 1 to `MAX_NAME_LENGTH` characters from ``[A-Za-z0-9_.-]``, not starting
    with ``.`` or ``-``.  A leading ``/`` is rejected rather than stripped, so one
    segment never has two spellings.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"expected a segment name of type str (got {type(name).__name__})")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"segment name {name!r} is too long: expected at most {MAX_NAME_LENGTH} "
            f"characters (got {len(name)})",
            segment=name,
        )
    if not _VALID.match(name):
        raise InvalidNameError(
            f"invalid segment name {name!r}: expected letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-'",
            segment=name,
        )
    return name
