"""`Pool`: ``multiprocessing.Pool``, with large arrays through shared memory."""

from __future__ import annotations

import functools
import multiprocessing.pool
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from . import _keepers, _offload


class _Settled:
    """A pool's call once its results are in: releases its arguments, reports lost results."""

    def __init__(
        self,
        arguments: _offload.Arguments,
        holds: list[str],
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self.arguments, self.holds = arguments, holds
        self.callback, self.error_callback = callback, error_callback
        self.error: Exception | None = None

    def success(self, value: Any) -> None:
        self.arguments.release(self.holds)
        try:
            _offload.check(value)
        except Exception as exc:
            self.error = exc
            if self.error_callback is not None:
                self.error_callback(exc)
            return
        if self.callback is not None:
            self.callback(value)

    def failure(self, error: BaseException) -> None:
        self.arguments.release(self.holds)
        if self.error_callback is not None:
            self.error_callback(error)


class AsyncResult:
    """What `Pool.apply_async` and `Pool.map_async` return: as ``multiprocessing``'s."""

    def __init__(self, inner: multiprocessing.pool.AsyncResult[Any], settled: _Settled) -> None:
        self._inner, self._settled = inner, settled

    def ready(self) -> bool:
        """Whether the call has completed."""
        return self._inner.ready()

    def successful(self) -> bool:
        """Whether the call completed without raising (``ValueError`` if not ready)."""
        return self._inner.successful() and self._settled.error is None

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is available or ``timeout`` seconds pass."""
        self._inner.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """Return the result when it arrives; raise the call's exception if it raised."""
        value = self._inner.get(timeout)
        if self._settled.error is not None:
            raise self._settled.error
        return value


class _Results(Iterator[Any]):
    """What `Pool.imap` returns: the results in turn, its arguments released at the end."""

    def __init__(
        self, inner: Iterator[Any], arguments: _offload.Arguments, holds: list[str]
    ) -> None:
        self._inner, self._arguments, self._holds = inner, arguments, holds

    def __next__(self) -> Any:
        return _offload.check(self._next())

    def _next(self) -> Any:
        try:
            return next(self._inner)
        except StopIteration:
            self._arguments.release(self._holds)
            raise

    def next(self, timeout: float | None = None) -> Any:
        """The next result, waiting at most ``timeout`` seconds (as ``IMapIterator.next``)."""
        try:
            value = self._inner.next(timeout)  # type: ignore[attr-defined]
        except StopIteration:
            self._arguments.release(self._holds)
            raise
        return _offload.check(value)


class Pool(multiprocessing.pool.Pool):
    """A drop-in ``multiprocessing.Pool`` that moves large NumPy arrays through shared
    memory instead of pickling them, both ways.

    The same constructor (``context=`` included) and methods, with the same
    meaning as `ProcessPoolExecutor`'s: every array of at least ``min_bytes`` in a
    task's arguments or result (also inside tuples, lists and dicts) goes through
    shared memory; tasks get copy-on-write views that they may write to without
    anyone else seeing it; results are plain ``numpy.ndarray`` objects holding
    their memory.  `map`, `starmap`, `imap`, `imap_unordered` and their
    asynchronous forms copy each distinct array once per call, `apply` and
    `apply_async` once per call too.  An argument's segment is removed when the
    call's results are all in, or at `terminate` (the ``with`` block's end) or
    `join`.

    Parameters
    ----------
    processes, initializer, initargs, maxtasksperchild, context
        As for ``multiprocessing.pool.Pool``.
    min_bytes : int, default 1 MiB
        Arrays of at least this many bytes go through shared memory.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        min_bytes: int = _offload.DEFAULT_MIN_BYTES,
    ) -> None:
        self._arguments = _offload.Arguments(min_bytes)
        self._workers: set[int] = set()  # every worker's pid, for `_offload.sweep`
        _keepers.start_tracker()  # before any worker: they must share it
        start = functools.partial(_offload.start_worker, initializer)
        super().__init__(processes, start, initargs, maxtasksperchild, context)

    def apply_async(  # type: ignore[override]
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult:
        """As ``multiprocessing.pool.Pool.apply_async``."""
        holds: list[str] = []
        args, kwds = self._arguments.share((tuple(args), dict(kwds)), holds)
        settled = _Settled(self._arguments, holds, callback, error_callback)
        call = _offload.Call(func, self._arguments.min_bytes)
        try:
            inner = super().apply_async(call, args, kwds, settled.success, settled.failure)
        except BaseException:
            self._arguments.release(holds)
            raise
        self._note_workers()
        return AsyncResult(inner, settled)

    def _map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        mapper: Callable[..., Any],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult:
        # map, starmap and their async forms all come here (CPython 3.9 to 3.13).
        self._check_running()  # type: ignore[attr-defined]
        batch = _offload.Batch()
        settled = _Settled(self._arguments, batch.holds, callback, error_callback)
        call = _offload.Call(mapper, self._arguments.min_bytes)  # a chunk's items share copies
        try:
            items = self._arguments.share(list(iterable), batch.holds, batch)
            inner = super()._map_async(  # type: ignore[misc]
                func, items, call, chunksize, settled.success, settled.failure
            )
        except BaseException:
            self._arguments.release(batch.holds)
            raise
        self._note_workers()
        return AsyncResult(inner, settled)

    def imap(  # type: ignore[override]
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int = 1
    ) -> Iterator[Any]:
        """As ``multiprocessing.pool.Pool.imap``."""
        return self._lazily(super().imap, func, iterable, chunksize)

    def imap_unordered(  # type: ignore[override]
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int = 1
    ) -> Iterator[Any]:
        """As ``multiprocessing.pool.Pool.imap_unordered``."""
        return self._lazily(super().imap_unordered, func, iterable, chunksize)

    def _lazily(
        self,
        method: Callable[..., Iterator[Any]],
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int,
    ) -> Iterator[Any]:
        batch = _offload.Batch()

        def items() -> Iterator[Any]:  # consumed by the pool's task thread, as tasks go out
            for item in iterable:
                yield self._arguments.share(item, batch.holds, batch)

        call = _offload.Call(func, self._arguments.min_bytes)
        self._note_workers()
        return _Results(method(call, items(), chunksize), self._arguments, batch.holds)

    def terminate(self) -> None:
        """As ``multiprocessing.pool.Pool.terminate``; every argument's segment goes
        too, and whatever the workers left in shared memory as they were stopped."""
        self._note_workers()
        super().terminate()
        self._cleared()

    def join(self) -> None:
        """As ``multiprocessing.pool.Pool.join``; every argument's segment goes too,
        and whatever workers killed meanwhile left in shared memory."""
        self._note_workers()
        super().join()
        self._cleared()

    def _note_workers(self) -> None:
        self._workers.update(process.pid for process in list(self._pool) if process.pid)  # type: ignore[attr-defined]

    def _cleared(self) -> None:
        self._arguments.close()
        _offload.sweep(self._workers)
