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

import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

import numpy as np

from . import _cache, _inspect, _interrupts, _keepers, _layout, _names, _segment, _write
from ._array import SharedMemoryArray
from ._errors import OutOfSharedMemoryError, SegmentNotFoundError, UnsupportedDtypeError

DEFAULT_MIN_BYTES = 1 << 20
_PLAIN = (np.ndarray, np.memmap)  # array types that are plain data: sent through memory


def _replace(value: Any, kinds: tuple[type, ...], swap: Callable[[Any], Any]) -> Any:
    """``value`` with ``swap(item)`` for each item of an exact type in ``kinds``,
    within tuples, lists and dicts; the very same object where nothing changed."""
    kind = type(value)
    if kind in kinds:
        return swap(value)
    if kind is tuple or kind is list:
        items = [_replace(item, kinds, swap) for item in value]
        if all(new is old for new, old in zip(items, value)):
            return value
        return kind(items)
    if kind is dict:
        changed = {key: _replace(item, kinds, swap) for key, item in value.items()}
        if all(changed[key] is item for key, item in value.items()):
            return value
        return changed
    return value


def _shareable(array: np.ndarray[Any, Any], min_bytes: int) -> bool:
    return array.nbytes >= min_bytes and not array.dtype.hasobject


# ---------------------------------------------------------------- arguments


class Argument(NamedTuple):
    """What a task gets in place of a large array argument: its segment's name."""

    name: str
    memmap: bool  # the caller gave a numpy.memmap: the task gets one (as pickling does)


class Batch:
    """The arrays of one ``map``: each is copied once, however many tasks it is given to.

    Keyed by the array object; the batch keeps the arrays alive, so their ids are
    not reused while it lasts, and holds their segments until `Arguments.release`.
    """

    def __init__(self) -> None:
        self.arrays: dict[int, tuple[np.ndarray[Any, Any], Argument]] = {}
        self.holds: list[str] = []


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
        """``value`` with each large array replaced by an `Argument`, held by ``holds``."""

        def swap(array: np.ndarray[Any, Any]) -> Any:
            if not _shareable(array, self.min_bytes):
                return array
            known = None if batch is None else batch.arrays.get(id(array))
            if known is not None:
                argument = known[1]
            else:
                try:
                    handle = SharedMemoryArray.copy(None, array)
                except (UnsupportedDtypeError, OutOfSharedMemoryError):
                    return array  # pickled as usual: a drop-in never fails where pickling works
                argument = Argument(handle.name, type(array) is np.memmap)
                with self._lock:
                    self._handles[handle.name] = handle
                    self._holds[handle.name] = 0
                if batch is not None:
                    batch.arrays[id(array)] = (array, argument)
                    self._hold(argument.name, batch.holds)
            self._hold(argument.name, holds)
            return argument

        try:
            return _replace(value, _PLAIN, swap)
        except BaseException:
            self.release(holds)
            raise

    def _hold(self, name: str, holds: list[str]) -> None:
        if name not in holds:
            holds.append(name)
            with self._lock:
                self._holds[name] += 1

    def release(self, holds: list[str]) -> None:
        """Let go of what ``holds`` held: segments nothing else holds are removed."""
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


def _mapped_argument(argument: Argument) -> np.ndarray[Any, Any]:
    """The task's copy of an argument: a copy-on-write mapping of its segment."""
    name = argument.name
    segment, _, head = _segment.open_existing(name, writable=False, private=True)
    layout = _layout.decode(head, segment.size, name)
    if layout is None:
        raise SegmentNotFoundError(f"segment {name!r} is not a task's argument", segment=name)
    array = layout.view(segment)
    return array.view(np.memmap) if argument.memmap else array


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
    """Copy a result's array into a new segment, registered for crash cleanup only."""
    name = _names.generate()
    try:
        shape, dtype = _layout.normalize(array.shape, array.dtype)
        with _interrupts.deferred():
            made = _write.create(
                name, shape, dtype, _layout.is_fortran(array), array, keeper=os.getpid()
            )
            _cache.forget(name)  # this process is done with it
            _keepers.register_creator(name)
    except (UnsupportedDtypeError, OutOfSharedMemoryError):
        return array  # pickled as usual
    return Result(name, tuple(made.identity), type(array) is np.memmap)


def take(name: str, identity: tuple[int, ...], memmap: bool) -> Any:
    """Unpickle a `Result`: map its segment and remove its name (never raises:
    an error here would kill the pool's result thread, so it comes back as `Lost`)."""
    try:
        segment, found, head = _segment.open_existing(name, writable=True)
        if not found.same_file(identity):
            raise SegmentNotFoundError(
                f"the segment of a task's result, {name!r}, was replaced", segment=name
            )
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


# ---------------------------------------------------------------- the worker's side


def start_worker(initializer: Callable[..., object] | None, *initargs: Any) -> None:
    """A pool worker's initializer: leave when the parent dies, then run the user's.

    The standard pools' workers wait for their next task forever once their
    parent is killed (their siblings hold the task queue open), and so would the
    resource tracker they share, which removes the parent's segments only once
    every process using it has exited.
    """
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        watch = threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True)
        watch.name = "shared-memory-array-watch"
        watch.start()
    if initializer is not None:
        initializer(*initargs)


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
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
        mapped: dict[str, np.ndarray[Any, Any]] = {}  # one copy per argument per task

        def arrive(argument: Argument) -> np.ndarray[Any, Any]:
            array = mapped.get(argument.name)
            if array is None:
                array = mapped[argument.name] = _mapped_argument(argument)
            return array

        args = _replace(args, (Argument,), arrive)
        kwargs = _replace(kwargs, (Argument,), arrive)
        result = self.function(*args, **kwargs)
        del args, kwargs  # what the task no longer holds goes before its result is copied
        return ship(result, self.min_bytes)


def ship(value: Any, min_bytes: int) -> Any:
    """``value`` with each large array replaced by a `Result` whose segment holds it."""
    return _replace(
        value, _PLAIN, lambda array: _ship(array) if _shareable(array, min_bytes) else array
    )
