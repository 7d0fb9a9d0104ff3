"""A SharedMemoryManager that cleans up when the process that started it dies."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from multiprocessing import connection, managers
from typing import Any

from . import _segment

_POLL_SECONDS = 0.5


class _Tracker(managers._SharedMemoryTracker):  # type: ignore[misc,name-defined]
    """The stdlib server's segment list, made to survive segments unlinked by others."""

    def destroy_segment(self, segment_name: str) -> None:
        if segment_name in self.segment_names:
            self.segment_names.remove(segment_name)
        _segment.unlink(segment_name)

    def unlink(self) -> None:
        for segment_name in self.segment_names[:]:
            self.destroy_segment(segment_name)


class _Server(managers.SharedMemoryServer):
    shared_memory_context: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shared_memory_context = _Tracker(self.shared_memory_context.shared_memory_context_name)

    def serve_forever(self) -> None:
        threading.Thread(
            target=self._exit_with_parent, name="shared-memory-array-watch", daemon=True
        ).start()
        super().serve_forever()

    def _exit_with_parent(self) -> None:
        # The parent's sentinel fires when it dies; with fork, siblings started
        # later inherit the pipe's write end and keep it open, so also notice
        # being re-parented.
        parent = multiprocessing.parent_process()
        sentinel = getattr(parent, "sentinel", None)
        ppid = os.getppid()
        while os.getppid() == ppid:
            if sentinel is not None and connection.wait([sentinel], _POLL_SECONDS):
                break
            if sentinel is None:
                time.sleep(_POLL_SECONDS)
        self.shared_memory_context.unlink()
        stop = getattr(self, "stop_event", None)
        if stop is not None:
            stop.set()
        else:
            os._exit(0)


class SharedMemoryManager(managers.SharedMemoryManager):
    """Drop-in ``multiprocessing.managers.SharedMemoryManager`` that dies with its parent.

    The stdlib manager's server process outlives a parent killed with SIGKILL
    (CPython issue 81158), keeping every segment it tracks.  This one's server
    notices within half a second, unlinks its segments and exits. It also finishes
    its cleanup when some of its segments were already unlinked by someone else,
    where the stdlib server stops at the first missing one.

    Otherwise it is the standard class: the same methods (``start()``,
    ``shutdown()``, ``connect()``, ``SharedMemory(size)``,
    ``ShareableList(sequence)``) and context manager.  Pass it, started, as the
    ``manager`` of `SharedMemoryArray.allocate`, ``allocate_like`` or ``copy``.
    Like any manager it starts a process: under the ``spawn`` and
    ``forkserver`` start methods, create it under ``if __name__ == "__main__":``.
    Its constructor takes the standard class's arguments, all optional, listed
    below.

    Other Parameters
    ----------------
    address : tuple or str, optional
        Where the server listens.  By default a free address is chosen.
    authkey : bytes, optional
        The key that clients must present.  By default this process's
        ``multiprocessing.current_process().authkey``.
    serializer : str, optional
        How messages to the server are encoded: ``'pickle'`` (the default) or
        ``'xmlrpclib'``.
    ctx : multiprocessing context, optional
        The context whose start method starts the server.  By default the
        default context.
    shutdown_timeout : float, optional
        Python 3.11 and later, keyword-only: seconds that ``shutdown()`` waits
        for the server to exit before terminating it.  By default 1.0.

    Examples
    --------
    >>> import numpy as np
    >>> from shared_memory_array import SharedMemoryArray, SharedMemoryManager
    >>> with SharedMemoryManager() as manager:
    ...     shared = SharedMemoryArray.copy(manager, np.arange(3))
    ...     int(shared.as_array().sum())
    3
    """

    _Server = _Server
