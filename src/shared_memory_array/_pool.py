"""`Pool`: ``multiprocessing.Pool``, with large arrays through shared memory."""

from __future__ import annotations

import multiprocessing.pool
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from . import _keepers, _offload


class _Feed:
    """A map-family call's items, shared as the pool's task thread takes them.

    The pool sends the items in chunks of ``chunksize``, and a chunk's results
    come back together: one ticket per chunk holds the segments of all its items,
    on the first item that holds any.  At most ``window`` chunks that brought new
    segments are out (their results not back yet), and one more item may wait for
    room, as when pickling them through the pool's pipe stalls until a worker
    reads it: a stream of large arrays never fills shared memory.  Other items go
    at once: those that only reuse segments (the same array given to every
    task), and those that hold none.  Items that hold segments go marked (see
    `_offload.Shared`); the others go as they are, as the standard pool sends them.
    An array is copied once, and its segment goes once no later item will use it
    (known for a list; for an iterator, once an item comes without it) and no
    chunk given it is out.
    """

    def __init__(
        self, arguments: _offload.Arguments, items: Iterable[Any], chunksize: int, window: int
    ) -> None:
        self._arguments, self._items = arguments, items
        self._chunksize = max(1, chunksize)
        self._out: dict[int, list[str]] = {}  # ticket: the segments its chunk holds
        # The window's places taken: the tickets of the chunks out that brought new
        # segments, added by the feed (the pool's task thread), removed by the pool's
        # result thread.  A set rather than a threading.Semaphore, which cost more
        # than the rest of an item's bookkeeping; the feed, when it waits, is woken
        # through a SimpleQueue (written in C).
        self._window = window
        self._placed: set[int] = set()
        self._waiting = False
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._batch = _offload.Batch()
        known = isinstance(items, (list, tuple))
        self._uses = _offload.uses(items, arguments.min_bytes) if known else None
        self._bounded = True
        self._closed = False
        self.result: Any = None  # the pool's result object of the call, once made

    def __len__(self) -> int:
        return len(self._items)  # type: ignore[arg-type]  # only a map's list is asked

    def __iter__(self) -> Iterator[Any]:
        number: int | None = None  # the ticket of the chunk being filled, once it has one
        batch = self._batch
        for index, item in enumerate(self._items):
            if self._closed:  # the pool stops, or the call is over: send nothing more
                return
            if index % self._chunksize == 0:
                number = None
            if type(item) not in _MAY_HOLD_ARRAYS:  # an int, a string: as the stdlib sends it
                if batch.arrays:
                    batch.used = []
                    self._let_go()
                yield item
                continue
            holds = [] if number is None else self._out.get(number)
            if holds is None:  # the chunk's ticket was cancelled: the call is over
                return
            known = len(batch.arrays)
            shared = self._arguments.share(item, holds, batch)
            fresh = len(batch.arrays) > known  # copied an array into a new segment
            self._let_go()
            if not holds:
                yield item
                continue
            if fresh and number not in self._placed:
                try:
                    self._wait_for_room()
                except BaseException:
                    if number is None:  # else the chunk's ticket holds them: see close()
                        self._arguments.release(holds)
                    raise
                if self._closed:
                    if number is None:
                        self._arguments.release(holds)
                    return
            ticket = None  # the chunk's ticket, on an earlier item, covers this one
            if number is None:
                number = ticket = _offload.issue(self._arrived)
                self._out[number] = holds
            if fresh:
                self._placed.add(number)
            yield _offload.Shared, ticket, shared

    def _wait_for_room(self) -> None:
        """Wait until fewer than the window's chunks are out, unless waiting is over:
        the pool stops (its task thread's state, checked by multiprocessing's own
        loop too), or the call failed (a task that could not be sent sends no
        receipt; multiprocessing reports it once every chunk is done)."""
        if len(self._placed) < self._window:
            return
        task_thread = threading.current_thread()
        while self._bounded:
            self._waiting = True  # then look again: a result may have come meanwhile
            if len(self._placed) < self._window:
                break
            try:
                self._wake.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                stopped = getattr(task_thread, "_state", _RUN) != _RUN
                if stopped or getattr(self.result, "_success", True) is False:
                    self._bounded = False
        self._waiting = False

    def _let_go(self) -> None:
        """Drop the batch's arrays that no later item uses."""
        batch, uses = self._batch, self._uses
        used = set(batch.used)  # an array given twice in one item is one use
        if uses is None:
            done = [key for key in batch.arrays if key not in used]
        else:
            done = []
            for key in used:
                uses[key] -= 1
                if not uses[key]:
                    done.append(key)
        if done:
            batch.drop(done, self._arguments)

    def _arrived(self, number: int) -> None:
        self._arguments.release(self._out.pop(number, []))
        if number in self._placed:
            self._placed.discard(number)
            if self._waiting:
                self._wake.put(None)

    def unbound(self) -> None:
        """Stop waiting for results: some came back without their receipts (a
        result that could not be pickled), so their window places never return."""
        self._bounded = False
        self._wake.put(None)  # the pool's task thread, if it waits: the only one that can

    def close(self) -> None:
        """The call is over: let go of what items never reported back still hold."""
        self._closed = True
        self.unbound()
        self._batch.drop(list(self._batch.arrays), self._arguments)
        for number in list(self._out):
            # Whoever takes the ticket takes its holds: here, or `_arrived` in the
            # pool's result thread, which may be redeeming it right now.
            if _offload.cancel(number):
                self._arguments.release(self._out.pop(number, []))


_POLL_SECONDS = 0.1
_MAY_HOLD_ARRAYS = frozenset({tuple, list, dict, *_offload.PLAIN})
_RUN = multiprocessing.pool.RUN  # the string "RUN"


class _Workers(list):  # type: ignore[type-arg]
    """A pool's list of worker processes that keeps the pid of every worker ever in
    it, replaced ones included, for `_offload.sweep` (multiprocessing appends each
    worker once started, and removes it once it has exited)."""

    def __init__(self, workers: Iterable[Any] = ()) -> None:
        super().__init__()
        self.pids: set[int] = set()
        for worker in workers:
            self.append(worker)

    def append(self, worker: Any) -> None:
        if worker.pid:
            self.pids.add(worker.pid)
        super().append(worker)


class _Settled:
    """A pool call once its results are in: its arguments let go, its value unpacked."""

    def __init__(
        self,
        arguments: _offload.Arguments,
        holds: list[str],
        feed: _Feed | None,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self.arguments, self.holds, self.feed = arguments, holds, feed
        self.callback, self.error_callback = callback, error_callback
        self.value: Any = None
        self.error: BaseException | None = None

    def _done(self) -> None:
        self.arguments.release(self.holds)
        if self.feed is not None:
            self.feed.close()

    def success(self, value: Any) -> None:
        self._done()
        try:
            self.value = _offload.unpack(value) if self.feed is not None else _offload.check(value)
        except Exception as exc:
            self.failure(exc)
            return
        if self.callback is not None:
            self.callback(self.value)

    def failure(self, error: BaseException) -> None:
        self._done()
        self.error = error
        if self.error_callback is not None:
            self.error_callback(error)


class AsyncResult:
    """What `Pool.apply_async`, `Pool.map_async` and `Pool.starmap_async` return:
    the methods of ``multiprocessing.pool.AsyncResult``."""

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
        self._inner.get(timeout)
        if self._settled.error is not None:
            raise self._settled.error
        return self._settled.value


class _Results(Iterator[Any]):
    """What `Pool.imap` and `Pool.imap_unordered` return: the results in turn."""

    def __init__(self, inner: Iterator[Any], feed: _Feed) -> None:
        self._inner, self._feed = inner, feed

    def __next__(self) -> Any:
        return self._value(lambda: next(self._inner))

    def next(self, timeout: float | None = None) -> Any:
        """The next result, waiting at most ``timeout`` seconds (as ``IMapIterator.next``)."""
        return self._value(lambda: self._inner.next(timeout))  # type: ignore[attr-defined]

    def _value(self, take: Callable[[], Any]) -> Any:
        try:
            value = take()
        except StopIteration:
            self._feed.close()
            raise
        except multiprocessing.TimeoutError:
            raise
        except BaseException:  # came back without its receipt
            self._feed.unbound()
            raise
        return _offload.unpack([value])[0]


class Pool(multiprocessing.pool.Pool):
    """A drop-in ``multiprocessing.Pool`` that moves large NumPy arrays through shared
    memory instead of pickling them, both ways.

    The same constructor (``context=`` included) and methods, with the meaning of
    `ProcessPoolExecutor`'s: every array of at least ``min_bytes`` in a task's
    arguments or result (also inside plain tuples, lists and dicts) goes through
    shared memory; tasks get copy-on-write views that they may write to without
    the caller or later tasks seeing it (the tasks of one `map` or `starmap`
    chunk share one view, as they share one unpickled copy with pickling);
    results are plain ``numpy.ndarray`` objects that hold their memory (a task
    that made its result in shared memory itself returns ``out.transfer()``:
    no copy at all).

    `map`, `starmap`, `imap`, `imap_unordered` and their asynchronous forms copy
    each distinct array once per call, as the pool sends the tasks out: no more
    than a few chunks per worker ahead of the results, so a stream of large
    arrays never fills shared memory.  `apply` and `apply_async` copy their
    arrays once per call.  An argument's segment is removed once no task that
    was given it is still out, and at the latest at `terminate` (the ``with``
    block's end) or `join`; those also remove what workers killed meanwhile left
    in shared memory.  Where ``/dev/shm`` has no room for an array, it goes
    through a memfd segment (Linux), in either direction; where the memory has
    no room for it either, it is pickled as usual.

    Parameters
    ----------
    processes : int, optional
        As for ``multiprocessing.pool.Pool``: the number of workers.
    initializer : callable, optional
        Run as ``initializer(*initargs)`` in each worker as it starts.
    initargs : iterable
        The arguments of ``initializer``.
    maxtasksperchild : int, optional
        As for ``multiprocessing.pool.Pool``: workers are replaced after this
        many tasks.
    context : multiprocessing context, optional
        The start method's context, as for ``multiprocessing.pool.Pool``.
    min_bytes : int, default 1048576
        Arrays of at least this many bytes (1 MiB) go through shared memory.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        min_bytes: int = 1 << 20,
    ) -> None:
        self._arguments = _offload.Arguments(min_bytes)
        self._feeds: weakref.WeakSet[_Feed] = weakref.WeakSet()  # calls that may be out
        _keepers.start_tracker()  # before any worker: they must share it
        start = _offload.worker_start(initializer)
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
        args, kwds = self._arguments.share_once((tuple(args), dict(kwds)), holds)
        settled = _Settled(self._arguments, holds, None, callback, error_callback)
        call = _offload.Call(func, self._arguments.min_bytes)
        try:
            inner = super().apply_async(call, args, kwds, settled.success, settled.failure)
        except BaseException:
            self._arguments.release(holds)
            raise
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
        items = list(iterable)
        if chunksize is None:  # multiprocessing's choice, needed here for the window
            chunksize, extra = divmod(len(items), len(self._pool) * 4)
            chunksize += 1 if extra else 0
        feed = _Feed(self._arguments, items, chunksize, self._window())
        settled = _Settled(self._arguments, [], feed, callback, error_callback)
        settled.value = []  # what an empty call gets: multiprocessing calls back for none
        star = mapper is multiprocessing.pool.starmapstar  # type: ignore[attr-defined]
        work = _offload.Ticketed(func, star, self._arguments.min_bytes)
        mapstar = multiprocessing.pool.mapstar  # type: ignore[attr-defined]
        chunk = _offload.Chunk(mapstar)
        try:
            inner = super()._map_async(  # type: ignore[misc]
                work, feed, chunk, chunksize, settled.success, settled.failure
            )
        except BaseException:
            feed.close()
            raise
        feed.result = inner
        self._feeds.add(feed)
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
        feed = _Feed(self._arguments, iterable, chunksize, self._window())
        work = _offload.Ticketed(func, False, self._arguments.min_bytes)
        results = method(work, feed, chunksize)
        self._feeds.add(feed)
        return _Results(results, feed)

    def _window(self) -> int:
        """How many chunks with new segments may be out at once: one per worker,
        and one more."""
        return len(self._pool) + 1

    def terminate(self) -> None:
        """As ``multiprocessing.pool.Pool.terminate``; every argument's segment goes
        too, and whatever the workers left in shared memory as they were stopped."""
        for feed in list(self._feeds):  # their tasks will never report back
            feed.close()
        super().terminate()
        self._cleared()

    def join(self) -> None:
        """As ``multiprocessing.pool.Pool.join``; every argument's segment goes too,
        and whatever workers killed meanwhile left in shared memory."""
        super().join()
        self._cleared()

    @staticmethod
    def _help_stuff_finish(inqueue: Any, task_handler: threading.Thread, size: int) -> None:
        # Called by terminate() before it kills the workers.  multiprocessing stops
        # here once the task queue is empty, although its task thread may still have
        # to send the result thread its last message, under the result queue's
        # lock: a worker killed while it held that lock then leaves terminate()
        # waiting for the task thread forever (cpython#96995; it hung a test here on
        # 3.9).  So wait for the task thread to end, the workers still alive, taking
        # whatever it sends them meanwhile, unread, so that it never waits for room.
        inqueue._rlock.acquire()  # no worker takes anything more (never released, as there)
        while task_handler.is_alive():
            if inqueue._reader.poll(_POLL_SECONDS):
                inqueue._reader.recv_bytes()

    def _get_sentinels(self) -> list[Any]:
        # What multiprocessing's worker handler thread waits on besides the workers'
        # exits.  Its own list has the result pipe too: while any result waits to be
        # read, the thread wakes, polls every worker's exit status and waits again,
        # over and over: 9-14 us of the caller's CPU per task here with the standard
        # pool (chunksize 1), 25 with large arrays.  All else that the thread acts
        # on comes through this notifier: close(), terminate(), and the pool's
        # last call completing (CPython 3.9 to 3.13).
        return [self._change_notifier._reader]  # type: ignore[attr-defined]

    def _repopulate_pool(self) -> None:
        # multiprocessing starts every worker here (and in a static twin its worker
        # thread calls with this list): give it one that keeps their pids.
        if type(self._pool) is list:  # type: ignore[has-type]
            self._pool = _Workers(self._pool)  # type: ignore[has-type]
        super()._repopulate_pool()  # type: ignore[misc]

    def _cleared(self) -> None:
        self._arguments.close()
        _offload.sweep(self._pool.pids)
