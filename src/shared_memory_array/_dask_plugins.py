"""The Dask plugins that make workers and nannies hold their host's published copies.

Each worker and nanny the plugins set up counts as a member of its host
(`_hostcopy.enrol`): it joins the copies it uses and, when the last member of a
process closes, leaves them, and the last process of a host to leave unlinks
them.  `shared_memory_array.dask.publish` registers both plugins.
"""

from __future__ import annotations

from typing import Any

from distributed.core import Status
from distributed.diagnostics.plugin import NannyPlugin, WorkerPlugin

from . import _hostcopy

PLUGIN_NAME = "shared-memory-array"


class SharedMemoryArrayPlugin(WorkerPlugin):
    """Makes each worker hold the published copies it uses, and free them on teardown.

    `publish` registers it; registering it again does nothing.  A worker holds a
    copy from `publish` (or from its first use, for workers that joined later) until
    it closes; the last worker (or nanny: `publish` registers a nanny plugin too)
    of a host to close unlinks the host's copy.
    """

    idempotent = True  # distributed >= 2023.9: registering again is a no-op
    name = PLUGIN_NAME

    def setup(self, worker: Any) -> None:
        _hostcopy.enrol(id(worker))

    def teardown(self, worker: Any) -> None:
        # Older distributed replace a plugin registered again by tearing it down
        # on a running worker: only a closing worker lets go of its copies.
        if getattr(worker, "status", None) in (Status.running, Status.paused):
            return
        _hostcopy.withdraw(id(worker))


class NannyHold(NannyPlugin):
    """Makes each nanny hold its host's published copies until the nanny closes.

    A nanny outlives the worker processes it restarts, so a host's copy survives
    ``client.restart()`` and workers that all crash at once (out of memory).
    """

    idempotent = True
    name = PLUGIN_NAME + "-nanny"

    def setup(self, nanny: Any) -> None:
        _hostcopy.enrol(id(nanny))

    def teardown(self, nanny: Any) -> None:
        if getattr(nanny, "status", None) == Status.running:  # replaced, not closing
            return
        _hostcopy.withdraw(id(nanny))


def register_plugins(client: Any) -> None:
    """Register both plugins with ``client``'s cluster; again does nothing."""
    for plugin in (SharedMemoryArrayPlugin(), NannyHold()):
        if hasattr(client, "register_plugin"):  # distributed >= 2023.9.2
            client.register_plugin(plugin, name=plugin.name)
        else:  # pragma: no cover - older distributed
            nanny = isinstance(plugin, NannyPlugin)
            client.register_worker_plugin(plugin, name=plugin.name, nanny=nanny)
