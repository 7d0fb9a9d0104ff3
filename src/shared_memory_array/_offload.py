"""Large arrays through shared memory, both ways: what the drop-in executors send.

`Arguments` is the parent's side of a task's arguments: each distinct large array
is copied once into a segment the parent owns, and an `Argument` goes in its
place; the segment is removed once no pending task needs it.  In the worker,
`Call` maps each argument's segment copy-on-write (``MAP_PRIVATE``), so that the
task may write to its arrays as to unpickled copies and its writes reach nobody,
then copies each large array of its result into a segment of its own and returns
a `Result` in its place.  Unpickling a `Result` in the parent maps that segment and
removes its name at once: the caller gets a plain ``numpy.ndarray`` that holds
the memory, and nothing can leak once the result has arrived.

A result's segment stays registered with the resource tracker, which the workers
share with their parent, until the parent has it: if the parent is killed
meanwhile, the tracker removes it (see `_keepers.start_tracker`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing
import multiprocessing.connection
import multiprocessing.pool
import os
import pickle
import threading
import types
from collections.abc import Callable, Collection, Iterable
from multiprocessing.reduction import ForkingPickler
from typing import Any, NamedTuple

import numpy as np

from . import _cache, _inspect, _interrupts, _keepers, _layout, _segment, _write
from ._array import SharedMemoryArray
from ._errors import OutOfSharedMemoryError, SegmentNotFoundError, UnsupportedDtypeError

PLAIN = (np.ndarray, np.memmap)  # array types that are plain data: sent through memory


def _replace(
    value: Any,
    kinds: tuple[type, ...],
    swap: Callable[[Any], Any],
    _within: frozenset[int] = frozenset(),
) -> Any:
    """``value`` with ``swap(item)`` for each item of an exact type in ``kinds``,
    within tuples, lists and dicts; the very same object where nothing changed.

    A container within itself (``l.append(l)``) is not entered again: what it
    holds there travels as pickling sends it.
    """
    kind = type(value)
    if kind in kinds:
        return swap(value)
    if (kind is not tuple and kind is not list and kind is not dict) or id(value) in _within:
        return value
    # One pass, items other than containers handled here: a pool's feed runs this
    # for every task, and a recursive call per item cost four times as much.
    within: frozenset[int] | None = None
    new = []
    changed = False
    for item in value.values() if kind is dict else value:
        item_kind = type(item)
        if item_kind in kinds:
            replaced = swap(item)
        elif item_kind is tuple or item_kind is list or item_kind is dict:
            if within is None:
                within = _within | {id(value)}
            replaced = _replace(item, kinds, swap, within)
        else:
            replaced = item
        if replaced is not item:
            changed = True
        new.append(replaced)
    if not changed:
        return value
    return dict(zip(value, new)) if kind is dict else kind(new)


def _shareable(array: np.ndarray[Any, Any], min_bytes: int) -> bool:
    return array.nbytes >= min_bytes and not array.dtype.hasobject


def uses(items: Iterable[Any], min_bytes: int) -> dict[int, int]:
    """How many of ``items`` each large array (by id) is in."""
    counts: dict[int, int] = {}
    found: set[int] = set()

    def note(array: np.ndarray[Any, Any]) -> Any:
        if _shareable(array, min_bytes):
            found.add(id(array))
        return array

    for item in items:
        _replace(item, PLAIN, note)
        for key in found:
            counts[key] = counts.get(key, 0) + 1
        found.clear()
    return counts


# ---------------------------------------------------------------- arguments


class Argument(NamedTuple):
    """What a task gets in place of a large array argument: its segment's name."""

    name: str
    memmap: bool  # the caller gave a numpy.memmap: the task gets one (as pickling does)


class Batch:
    """The arrays of one ``map``: each is copied once, however many tasks it is given to.

    Keyed by the array object; the batch keeps the arrays alive, so their ids are
    not reused while it lasts, and holds their segments (``holds``) until it lets
    go of them (`drop`, or `Arguments.release` of ``holds``).
    """

    def __init__(self) -> None:
        self.arrays: dict[int, tuple[np.ndarray[Any, Any], Argument]] = {}
        self.holds: list[str] = []
        self.used: list[int] = []  # the arrays (keys) of the last `Arguments.share`

    def drop(self, keys: Iterable[int], arguments: Arguments) -> None:
        """Let go of these arrays: their segments go once no task given them is out."""
        names = []
        for key in keys:
            _, argument = self.arrays.pop(key)
            self.holds.remove(argument.name)
            names.append(argument.name)
        arguments.release(names)


class Arguments:
    """A pool's argument segments, each removed once nothing holds it.

    A holder is a list of segment names: a task's, or a batch's.
    """

    def __init__(self, min_bytes: int) -> None:
        if min_bytes < 0:
            raise ValueError(f"min_bytes must be at least 0 (got {min_bytes})")
        self.min_bytes = min_bytes
        self._lock = threading.Lock()
        self._holds: dict[str, int] = {}
        self._handles: dict[str, SharedMemoryArray[Any]] = {}

    def share(self, value: Any, holds: list[str], batch: Batch | None = None) -> Any:
        """``value`` with each large array replaced by an `Argument`, held by ``holds``;
        arrays new to ``batch`` are held by it too."""
        before = len(holds)
        if batch is not None:
            batch.used = []

        def swap(array: np.ndarray[Any, Any]) -> Any:
            known = None if batch is None else batch.arrays.get(id(array))
            if known is not None:  # the common case in a map: shared by an earlier item
                assert batch is not None
                batch.used.append(id(array))
                if known[1].name not in holds:  # else held already: by the item's chunk
                    with self._lock:
                        self._take(known[1].name, holds)
                return known[1]
            if not _shareable(array, self.min_bytes):
                return array
            try:
                handle = SharedMemoryArray.copy(None, array)
            except (UnsupportedDtypeError, OutOfSharedMemoryError):
                return array  # pickled as usual: a drop-in never fails where pickling works
            argument = Argument(handle.name, type(array) is np.memmap)
            with self._lock:
                self._handles[handle.name] = handle
                self._holds[handle.name] = 0
                self._take(argument.name, holds)
                if batch is not None:
                    batch.arrays[id(array)] = (array, argument)
                    batch.used.append(id(array))
                    self._take(argument.name, batch.holds)
            return argument

        try:
            return _replace(value, PLAIN, swap)
        except BaseException:
            added = holds[before:]
            del holds[before:]
            self.release(added)
            raise

    def share_once(self, value: Any, holds: list[str]) -> Any:
        """`share` for one call: an array given twice is one array, as pickling sends it."""
        batch = Batch()
        try:
            return self.share(value, holds, batch)
        finally:
            self.release(batch.holds)

    def _take(self, name: str, holds: list[str]) -> None:
        """Count ``holds`` among the holders of ``name``; call with the lock held."""
        if name not in holds:
            holds.append(name)
            self._holds[name] += 1

    def release(self, holds: list[str]) -> None:
        """Let go of what ``holds`` held: segments nothing else holds are removed."""
        if not holds:
            return
        done = []
        with self._lock:
            for name in holds:
                count = self._holds.get(name)
                if count is None:  # removed by close() already
                    continue
                if count > 1:
                    self._holds[name] = count - 1
                else:
                    del self._holds[name]
                    done.append(self._handles.pop(name))
            holds.clear()
        for handle in done:
            handle.close()

    def close(self) -> None:
        """Remove every segment still held: the pool is gone, no task will run."""
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
            self._holds.clear()
        for handle in handles:
            handle.close()


class _Kept(NamedTuple):
    mapping: _segment.Refreshable
    layout: _layout.Layout
    identity: _segment.Identity


# A pool worker's mappings of its tasks' arguments, by segment name (64 random
# bits each: never the name of another segment), kept from one task to the next:
# mapping and unmapping 80 MB cost more than a small task itself.  Kept only in
# workers whose watch thread lets go of them once their segments are removed
# (`start_worker`): the memory goes with the last mapping.
_kept: dict[str, _Kept] = {}
_keeping = False
_LET_GO_SECONDS = 0.25  # how soon a worker lets go of the mappings of removed segments


def _mapped_argument(argument: Argument) -> np.ndarray[Any, Any]:
    """The task's copy of an argument: a copy-on-write mapping of its segment,
    as if mapped for this task alone."""
    name = argument.name
    kept = _kept.get(name)
    segment = None if kept is None else kept.mapping.refreshed()
    if kept is None or segment is None:  # first time, or the last task's arrays live on
        if kept is None and _kept:  # a new array: those of a stream go as it flows
            _let_go_of_removed()
        segment, identity, head = _segment.open_existing(name, writable=False, private=True)
        layout = _layout.decode(head, segment.size, name)
        if layout is None:
            raise SegmentNotFoundError(f"segment {name!r} is not a task's argument", segment=name)
        if _keeping and segment.size:  # (an empty one has no mapping)
            _kept[name] = _Kept(_segment.Refreshable(segment), layout, identity)
    else:
        layout = kept.layout
    array = layout.view(segment)
    return array.view(np.memmap) if argument.memmap else array


def _let_go_of_views(views: dict[str, np.ndarray[Any, Any]]) -> None:
    """A task is done with ``views``: give back the memory of what it wrote to
    them (refresh their kept mappings), unless it kept them."""
    names = list(views)
    views.clear()
    for name in names:
        kept = _kept.get(name)
        if kept is not None:
            kept.mapping.refresh()


def _let_go_of_removed() -> None:
    """Forget the kept mappings of segments that are gone: removed by the parent."""
    for name, kept in list(_kept.items()):
        if not kept.identity.same_file(_segment.identity(name)):
            _kept.pop(name, None)


def _forget_kept() -> None:
    global _keeping
    _keeping = False  # a child forked by a task has no watch thread
    _kept.clear()


os.register_at_fork(after_in_child=_forget_kept)


# ---------------------------------------------------------------- results


class Result(NamedTuple):
    """What a task returns in place of a large array: its segment, to be taken once."""

    name: str
    identity: tuple[int, ...]
    memmap: bool

    def __reduce__(self) -> tuple[Any, ...]:
        return (take, tuple(self))


class Lost(NamedTuple):
    """A result the parent could not take; `Call`'s callers raise ``error``."""

    error: Exception


def _ship(array: np.ndarray[Any, Any]) -> Any:
    """Copy a result's array into a new segment: a named one registered for crash
    cleanup only, or a memfd one held until the parent has it."""
    try:
        shape, dtype = _layout.normalize(array.shape, array.dtype)
        fortran = _layout.is_fortran(array)
        with _interrupts.deferred():
            name, made = _write.create(
                None, shape, dtype, fortran, array, keeper=os.getpid(), backend=None
            )
            _cache.forget(name)  # this process is done with it
            if _segment.is_memfd(name):
                _segment.send(name)
            else:
                _keepers.register_creator(name)
    except (UnsupportedDtypeError, OutOfSharedMemoryError):
        return array  # pickled as usual
    return Result(name, tuple(made.identity), type(array) is np.memmap)


def _replaced(name: str) -> SegmentNotFoundError:
    return SegmentNotFoundError(
        f"the segment of a task's result, {name!r}, was replaced or taken already",
        segment=name,
    )


def take(name: str, identity: tuple[int, ...], memmap: bool) -> Any:
    """Unpickle a `Result`: map its segment and remove its name (never raises:
    an error here would kill the pool's result thread, so it comes back as `Lost`)."""
    try:
        if _segment.is_memfd(name):  # claimed from the worker, then let go of here
            mine = _segment.claim(name, _segment.Identity(*identity))
            if mine is None:
                raise _replaced(name)
            try:
                segment, found, head = _segment.open_existing(mine, writable=True)
            finally:
                _segment.unlink(mine)
        else:
            segment, found, head = _segment.open_existing(name, writable=True)
            if not found.same_file(identity):
                raise _replaced(name)
            _segment.unlink(name)
            _keepers.unregister_creator(name)
        layout = _layout.decode(head, segment.size, name)
        if layout is None:
            raise SegmentNotFoundError(f"segment {name!r} is not a task's result", segment=name)
        array = layout.view(segment)
    except Exception as exc:
        return Lost(exc)
    return array.view(np.memmap) if memmap else array


def check(value: Any) -> Any:
    """Return a task's result as received, or raise the error of a result lost on the way."""

    def found(lost: Lost) -> None:
        raise lost.error

    _replace(value, (Lost,), found)
    return value


def sweep(pids: Collection[int]) -> None:
    """Remove what dead workers ``pids`` left: a result made but never sent, a segment
    half made (killed meanwhile), or anything else they owned.

    Their other segments were registered with the resource tracker they shared
    with this process, which would remove them only when this process exits.
    """
    for info in _inspect.clean_left_by(pids):
        if not info.draft:
            _keepers.unregister_creator(info.name)


# ---------------------------------------------------------------- tickets

# What to do when the result of a map-family task arrives, by ticket number: a
# map's items are shared as the pool sends them, and let go as their results
# come back (see `_pool`).  Plain dict operations: safe from any thread.
_tickets: dict[int, Callable[[int], None]] = {}
_ticket_numbers = itertools.count()


def issue(arrived: Callable[[int], None]) -> int:
    """A ticket for one chunk: ``arrived(number)`` runs when its `Receipted` value is
    unpickled here."""
    number = next(_ticket_numbers)
    _tickets[number] = arrived
    return number


def cancel(number: int) -> bool:
    """Forget a ticket; whether it was still waiting for its task's result."""
    return _tickets.pop(number, None) is not None


def redeem(number: int, value: Any) -> Any:
    """Unpickle a `Receipted` value, in the pool's result thread: never raises."""
    arrived = _tickets.pop(number, None)
    if arrived is not None:
        arrived(number)
    return value


class Receipted(NamedTuple):
    """What a worker sends back for a ticketed item: its value, which redeems the
    ticket as the parent unpickles it."""

    number: int
    value: Any

    def __reduce__(self) -> tuple[Any, ...]:
        return (redeem, (self.number, self.value))


class Shared:
    """Marks a map-family item that holds segments: `_pool._Feed` sends it as
    ``(Shared, ticket, item)``, with the ticket of its chunk on the chunk's first
    such item (else None), and `Argument` objects in the item in place of its
    large arrays.  Other items go as they are.

    The class itself is the mark: a pickle names it once per chunk, which costs a
    tenth of what pickling an instance for each item did.
    """


class Raised(NamedTuple):
    """A ticketed task's exception, sent back as its value (see `Ticketed`)."""

    error: BaseException


def unpack(values: list[Any]) -> list[Any]:
    """A map-family call's values; raise the first task's exception, if any."""
    for value in values:
        if type(value) is Raised:
            raise value.error
    check(values)
    return values


class Ticketed:
    """A map-family task's function, called with each item as `_pool._Feed` sends
    it: a `Shared` item has its arguments mapped, and comes back `Receipted`
    when it carries its chunk's ticket; other items go to the function as they
    are.  The value's large arrays are shipped.

    The receipt must come back whatever happens, or the call's window would stay
    short of a place (see `_pool`): an exception comes back as a `Raised` value,
    and so does a value that cannot be pickled, which would otherwise fail the
    whole chunk's result.
    """

    __slots__ = ("_reduced", "function", "min_bytes", "star")

    def __init__(self, function: Callable[..., Any], star: bool, min_bytes: int) -> None:
        self.function = function
        self.star = star
        self.min_bytes = min_bytes
        self._reduced: tuple[Any, ...] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        if self._reduced is None:
            self._reduced = _once(Ticketed, (self.function, self.star, self.min_bytes))
        return self._reduced

    def __call__(self, item: Any) -> Any:
        global _chunk_failed
        number = None
        own: dict[str, np.ndarray[Any, Any]] | None = None  # views of an item not in a `Chunk`
        marked = type(item) is tuple and len(item) == 3 and item[0] is Shared
        if _chunk_failed:  # not run, as in the standard pool, whose chunk stops there
            return Receipted(item[1], None) if marked and item[1] is not None else None
        try:
            if marked:
                _, number, item = item
                views = _chunk_views
                if views is None:
                    views = own = {}
                item = _arrive(item, views)  # a segment gone: the item's error, receipted
            value = self.function(*item) if self.star else self.function(item)
            if type(value) not in _ALWAYS_PICKLED:
                value = ship(value, self.min_bytes)
        except Exception as exc:  # with its traceback, as multiprocessing sends it
            value = Raised(multiprocessing.pool.ExceptionWithTraceback(exc, exc.__traceback__))  # type: ignore[attr-defined]
            _chunk_failed = _chunk_views is not None  # the rest of a map chunk is not run
            # The wrapper holds the traceback as text.  The object would make a cycle
            # (this frame holds the exception, its traceback this frame) that keeps
            # the task's arrays, and so their mappings, until a garbage collection.
            exc.__traceback__ = None
        del item
        if own:
            _let_go_of_views(own)
        if type(value) not in _ALWAYS_PICKLED:  # trying costs more than a small task
            try:
                ForkingPickler.dumps(value)
            except Exception as problem:  # reported as multiprocessing reports it
                discard(value)
                sent = value.error if type(value) is Raised else value
                error = multiprocessing.pool.MaybeEncodingError(problem, sent)  # type: ignore[attr-defined]
                value = Raised(error)
        return value if number is None else Receipted(number, value)


# The views of a map chunk's arguments while a `Chunk` runs in this worker: its
# items share one view of each, as they would share one unpickled copy.
_chunk_views: dict[str, np.ndarray[Any, Any]] | None = None
_chunk_failed = False  # an item of the running `Chunk` raised


class Chunk:
    """A map chunk's function (``multiprocessing.pool.mapstar``) as a worker runs
    it: its `Ticketed` items share their views, let go of when the chunk is done,
    and once one raises the others are not run (their values, never seen: None)."""

    __slots__ = ("_reduced", "mapper")

    def __init__(self, mapper: Callable[[Any], list[Any]]) -> None:
        self.mapper = mapper
        self._reduced: tuple[Any, ...] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        if self._reduced is None:
            self._reduced = _once(Chunk, (self.mapper,))
        return self._reduced

    def __call__(self, task: Any) -> list[Any]:
        global _chunk_views, _chunk_failed
        views: dict[str, np.ndarray[Any, Any]] = {}
        _chunk_views = views
        try:
            return self.mapper(task)
        finally:
            _chunk_views, _chunk_failed = None, False
            if views:
                _let_go_of_views(views)


# What `_once` pickled, unpickled here, by its bytes: a pool sends a map call's
# `Ticketed` function and its `Chunk` with each of its chunks, and finding a
# function by name as a pickle is loaded costs microseconds, more than a small
# task.  Cleared when full.
_loaded: dict[bytes, Any] = {}
_LOADED_MAX = 64


def _load(blob: bytes) -> Any:
    """Unpickle what `_once` pickled, once per process for each ``blob``."""
    value = _loaded.get(blob)
    if value is None:
        kind, args = pickle.loads(blob)
        value = kind(*args)
        if len(_loaded) >= _LOADED_MAX:
            _loaded.clear()
        _loaded[blob] = value
    return value


def _pickled_by_name(function: object) -> bool:
    """Whether pickle sends ``function`` as a reference to its name: a function, a
    class, or a module's builtin (not a builtin bound to an object: ``[].append``)."""
    if type(function) is types.BuiltinFunctionType:
        return isinstance(function.__self__, types.ModuleType)
    return type(function) is types.FunctionType or isinstance(function, type)


def _once(kind: type, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A reduction of ``kind(*args)``, with a function first in ``args``, pickled
    once here and loaded once in each process (`_load`) when that function is
    pickled by name; else the plain one.

    An object pickled by value (a bound method, a ``functools.partial``) may be
    changed by the tasks given it: each gets a fresh copy, as with the standard
    pools.
    """
    if _pickled_by_name(args[0]):
        with contextlib.suppress(Exception):  # e.g. a lambda: fails as the pools report it
            return (_load, (pickle.dumps((kind, args)),))
    return (kind, args)


_ALWAYS_PICKLED = frozenset(
    {type(None), bool, int, float, complex, str, bytes, np.bool_, np.int64, np.float64}
)


# ---------------------------------------------------------------- the worker's side


def worker_start(initializer: object) -> Any:
    """The initializer to give a pool: `start_worker`, then ``initializer``.

    Anything but a callable or None is given as is, for the pool to refuse it
    with its own error.
    """
    if initializer is not None and not callable(initializer):
        return initializer
    return functools.partial(start_worker, initializer)


def start_worker(initializer: Callable[..., object] | None, *initargs: Any) -> None:
    """A pool worker's initializer: leave when the parent dies, keep the mappings
    of arguments from task to task (see `_kept`), then run the user's.

    The standard pools' workers wait for their next task forever once their
    parent is killed (their siblings hold the task queue open), and so would the
    resource tracker they share, which removes the parent's segments only once
    every process using it has exited.
    """
    global _keeping
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        watch = threading.Thread(target=_watch, args=(parent.sentinel,), daemon=True)
        watch.name = "shared-memory-array-watch"
        watch.start()
        _keeping = _segment.CAN_REFRESH
    if initializer is not None:
        initializer(*initargs)


def _watch(sentinel: int) -> None:
    """Let go of the mappings of removed segments now and then; exit with the parent."""
    while not multiprocessing.connection.wait([sentinel], _LET_GO_SECONDS):
        with contextlib.suppress(Exception):  # never stop watching the parent
            _let_go_of_removed()
    os._exit(1)


class Call:
    """A task's function as a worker runs it: arguments mapped, large results shipped."""

    __slots__ = ("function", "min_bytes")

    def __init__(self, function: Callable[..., Any], min_bytes: int) -> None:
        self.function = function
        self.min_bytes = min_bytes

    def __reduce__(self) -> tuple[Any, ...]:
        return (Call, (self.function, self.min_bytes))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        views: dict[str, np.ndarray[Any, Any]] = {}
        args, kwargs = _arrive(args, views), _arrive(kwargs, views)
        result = self.function(*args, **kwargs)
        del args, kwargs  # what the task no longer holds goes before its result is copied
        shipped = ship(result, self.min_bytes)
        copied = shipped is not result
        del result
        if views:
            _let_go_of_views(views)
        if copied:  # segments made: they must not outlive a failed send
            try:
                ForkingPickler.dumps(shipped)
            except Exception:
                discard(shipped)
                raise
        return shipped


def _arrive(value: Any, views: dict[str, np.ndarray[Any, Any]]) -> Any:
    """``value`` with each `Argument` replaced by a view of its segment, one per
    segment in ``views``."""

    def view(argument: Argument) -> np.ndarray[Any, Any]:
        array = views.get(argument.name)
        if array is None:
            array = views[argument.name] = _mapped_argument(argument)
        return array

    return _replace(value, (Argument,), view)


def ship(value: Any, min_bytes: int) -> Any:
    """``value`` with each large array replaced by a `Result` whose segment holds it
    (one per array object, as pickling keeps one object given twice one)."""
    shipped: dict[int, Any] = {}

    def swap(array: np.ndarray[Any, Any]) -> Any:
        if not _shareable(array, min_bytes):
            return array
        result = shipped.get(id(array))
        if result is None:
            result = shipped[id(array)] = _ship(array)
        return result

    return _replace(value, PLAIN, swap)


def discard(value: Any) -> None:
    """Remove the segments of the `Result` objects in ``value``: it will not be sent."""

    def remove(result: Result) -> None:
        if _segment.unlink(result.name):
            _keepers.unregister_creator(result.name)

    _replace(value, (Result,), remove)
