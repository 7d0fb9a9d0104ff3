"""Which shared memory a process sees: the key that tells one host from another.

Two processes can share a segment only if they see the same ``/dev/shm``: same
kernel and same mount.  Hostnames and IP addresses do not tell that (containers on
one kernel may share a hostname but not ``/dev/shm``, or the reverse), so a host
is keyed by the kernel's boot id plus the device number of the shared memory
filesystem.  Two machines can have the same device number, never the same boot id.
"""

from __future__ import annotations

import functools
import socket

from . import _segment

_BOOT_ID = "/proc/sys/kernel/random/boot_id"  # Linux: random, fresh at every boot


@functools.cache
def host_key() -> str:
    """Return the key of the shared memory this process sees: ``'<boot>:<device>'``.

    Processes with equal keys can attach each other's segments.  On Linux it is the
    first 16 hex digits (64 random bits) of the kernel's boot id and the device
    number of ``/dev/shm`` in hex (so containers with a private ``/dev/shm`` count
    as hosts of their own); elsewhere the hostname stands in for the boot id.
    Every pickled handle carries it, hence the short form.
    """
    try:
        with open(_BOOT_ID) as boot_id:
            boot = boot_id.read().strip().replace("-", "")[:16]
    except OSError:
        boot = socket.gethostname()
    return f"{boot}:{_segment.device():x}"
