"""`ProcessPoolExecutor`: the standard one, with large arrays through shared memory."""

from __future__ import annotations

import concurrent.futures
import functools
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from multiprocessing.context import BaseContext
from typing import Any, TypeVar

from . import _keepers, _offload

_T = TypeVar("_T")


class _Relay(Future):  # type: ignore[type-arg]
    """The caller's future: settled when the pool's is, once its result has arrived.

    Cancelling it cancels the pool's future; a result that could not be taken
    from shared memory makes it fail with that error.
    """

    def __init__(self, inner: Future[Any]) -> None:
        super().__init__()
        self._inner = inner

    def cancel(self) -> bool:
        self._inner.cancel()  # if it can be, the relay is cancelled by then (`_settle`)
        return self.cancelled()

    def running(self) -> bool:
        return not self.done() and self._inner.running()


def _settle(
    relay: _Relay, arguments: _offload.Arguments, holds: list[str], inner: Future[Any]
) -> None:
    arguments.release(holds)
    if inner.cancelled():
        Future.cancel(relay)
        relay.set_running_or_notify_cancel()  # wakes wait() and as_completed()
        return
    error = inner.exception()
    if error is None:
        try:
            relay.set_result(_offload.check(inner.result()))
            return
        except Exception as exc:
            error = exc
    relay.set_exception(error)


class ProcessPoolExecutor(concurrent.futures.ProcessPoolExecutor):
    """A drop-in ``concurrent.futures.ProcessPoolExecutor`` that moves large NumPy
    arrays through shared memory instead of pickling them, both ways.

    Replace the import and nothing else changes: tasks get and return plain
    ``numpy.ndarray`` objects.  Every array of at least ``min_bytes`` in a task's
    arguments (positional or keyword, also inside plain tuples, lists and dicts)
    is copied once into shared memory, and the worker maps it instead of
    unpickling it; every such array in a task's result comes back the same way.

    - **Arguments keep pickling's meaning.**  The task gets a copy-on-write view:
      it may write to it, and its writes reach neither the caller nor later tasks
      (a private mapping: no page is copied until the task writes to it).  The
      calls of one chunk (``map(..., chunksize=n)``) share one view, as they
      share one unpickled copy with pickling.
    - **Copied once per call.**  `map` copies each distinct array once, however
      many tasks it goes to.  Each `submit` copies its arrays again, so an array
      changed between two calls reaches each task as it was at its call.  To give
      one array to many `submit` calls without copying it each time, share it
      once yourself (`SharedMemoryArray.copy`) and pass the handle.
    - **Results own their memory.**  A result array is a plain ``numpy.ndarray``
      over shared memory whose name is already removed: its memory goes when the
      array does.  The worker copies it into shared memory once; a task that
      makes its result in shared memory itself (`SharedMemoryArray.allocate`)
      can return ``out.transfer()`` instead, and the caller gets the owner
      handle of that very segment, with no copy at all.
    - **Nothing is left behind.**  An argument's segment is removed as soon as no
      pending task needs it; cancelled tasks, tasks that raise, a worker killed
      (``BrokenProcessPool``) and `shutdown` all release theirs, `shutdown` also
      removes what killed workers left, and if this process is killed its
      resource tracker removes the rest (the workers leave with it).

    Where ``/dev/shm`` has no room for an array, it goes through a memfd segment
    (Linux), in either direction.  Arrays smaller than ``min_bytes``, arrays
    holding Python objects, subclasses other than ``numpy.memmap``, arrays the
    memory has no room for, and everything else are pickled as usual.  `map`
    submits every task at once, as the standard executor does: with many
    distinct large arrays, each is in shared memory until its task is done
    (`Pool` sends them out as workers take them).

    Parameters
    ----------
    max_workers : int, optional
        The number of worker processes, as for ``concurrent.futures``.
    mp_context : multiprocessing context, optional
        The start method's context, as for ``concurrent.futures``.
    initializer : callable, optional
        Run as ``initializer(*initargs)`` in each worker as it starts.
    initargs : tuple
        The arguments of ``initializer``.
    max_tasks_per_child : int, optional
        Workers are replaced after this many tasks (Python 3.11 and later).
    min_bytes : int, default 1048576
        Arrays of at least this many bytes (1 MiB) go through shared memory.

    Examples
    --------
    >>> import numpy as np
    >>> from shared_memory_array import ProcessPoolExecutor
    >>> with ProcessPoolExecutor(max_workers=2) as executor:  # doctest: +SKIP
    ...     sums = list(executor.map(np.sum, [np.ones(1_000_000)] * 4))
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        min_bytes: int = 1 << 20,
    ) -> None:
        self._arguments = _offload.Arguments(min_bytes)
        self._batches = threading.local()
        self._workers: set[int] = set()  # every worker's pid, for `_offload.sweep`
        extra: dict[str, Any] = {}
        if max_tasks_per_child is not None:
            if sys.version_info < (3, 11):
                raise TypeError("max_tasks_per_child needs Python 3.11 or later")
            extra["max_tasks_per_child"] = max_tasks_per_child
        _keepers.start_tracker()  # before any worker: they must share it
        start = _offload.worker_start(initializer)
        super().__init__(max_workers, mp_context, start, initargs, **extra)

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """Schedule ``fn(*args, **kwargs)``, its large arrays through shared memory."""
        holds: list[str] = []
        batch: _offload.Batch | None = getattr(self._batches, "current", None)
        if batch is None:
            args, kwargs = self._arguments.share_once((args, kwargs), holds)
        else:
            args, kwargs = self._arguments.share((args, kwargs), holds, batch)
        call = _offload.Call(fn, self._arguments.min_bytes)
        try:
            inner = super().submit(call, *args, **kwargs)
        except BaseException:
            self._arguments.release(holds)
            raise
        self._note_workers()
        relay = _Relay(inner)
        inner.add_done_callback(functools.partial(_settle, relay, self._arguments, holds))
        return relay

    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[_T]:
        """As ``concurrent.futures.ProcessPoolExecutor.map``; each distinct large
        array among the arguments is copied into shared memory once."""
        batch = self._batches.current = _offload.Batch()
        try:
            return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)
        finally:
            self._batches.current = None
            self._arguments.release(batch.holds)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As ``concurrent.futures.ProcessPoolExecutor.shutdown``; with ``wait``,
        every argument's segment is gone when it returns, and so is whatever
        workers killed meanwhile left in shared memory."""
        self._note_workers()
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait:
            self._arguments.close()
            _offload.sweep(self._workers)

    def _note_workers(self) -> None:
        processes = self._processes
        if processes:
            self._workers.update(list(processes))
