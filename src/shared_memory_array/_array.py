"""`SharedMemoryArray`: a small, picklable handle to a NumPy array in shared memory."""

from __future__ import annotations

import contextlib
import errno
import operator
import os
import pickle
import weakref
from collections.abc import Iterator
from multiprocessing import util
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from . import _cache, _interrupts, _keepers, _layout, _names, _segment, _transfer, _write
from ._errors import (
    ClosedHandleError,
    ForeignHostError,
    InvalidNameError,
    LayoutError,
    NotOwnerError,
    SegmentNotFoundError,
)
from ._host import host_key
from ._layout import Layout, Region, ShapeLike
from ._segment import Bytes, Identity

if TYPE_CHECKING:
    from ._lock import SegmentLock

__all__ = ["SharedMemoryArray"]

_ScalarT_co = TypeVar("_ScalarT_co", bound=np.generic, covariant=True)
_Handle = TypeVar("_Handle", bound="SharedMemoryArray[Any]")
Order = Literal["C", "F"]
Backend = Literal["auto", "named", "memfd"]


def _fortran(order: str | None) -> bool:
    if order not in ("C", "F"):
        raise LayoutError(f"expected order 'C' or 'F' (got {order!r})")
    return order == "F"


def _still_ours(name: str, identity: Identity | None) -> bool:
    """Whether ``name`` still leads to the segment of that identity (not a newer one)."""
    return identity is None or identity.same_file(_segment.identity(name))


def _release(name: str, creator_pid: int, identity: Identity | None) -> None:
    """Unlink an owned segment: run by close(), garbage collection or process exit."""
    # A fork()ed child holds a copy of the owner handle and of this finalizer;
    # only the creating process may unlink.
    if os.getpid() == creator_pid:
        with _interrupts.deferred():
            if _still_ours(name, identity):
                _segment.unlink(name)
            _keepers.unregister_creator(name)
            _cache.forget(name)


class _Spec(NamedTuple):
    """What a handle is and pickles; regions and read-only handles derive by replacement.

    Only per-process state (the mapping, the finalizer, the owner's pid) lives on
    the handle itself.
    """

    name: str
    layout: Layout
    region: Region | None = None  # a part of the array, from basic indexing
    identity: Identity | None = None  # which segment the name meant when mapped
    readonly: bool = False
    host: str | None = None  # host key of the process that pickled it (None: this one)


class SharedMemoryArray(Generic[_ScalarT_co]):
    """A handle to a NumPy array that lives in a named shared memory segment.

    Make one with `allocate`, `allocate_like` or `copy`, which create a segment and
    return its owner, or with `attach`, which opens an existing one.  Calling the
    class directly, ``SharedMemoryArray()``, raises ``TypeError``.  A handle pickles
    to a reference to its segment, about 140 bytes (see `__reduce__`), so passing it
    to a worker process costs the same whatever the array's size, and the worker
    gets a zero-copy view of the same memory from `as_array`.

    The class is generic over the NumPy scalar type, for type checkers only:
    ``SharedMemoryArray[np.float64]`` is valid in annotations and at run time.  The
    constructors are annotated as returning ``SharedMemoryArray[Any]``.

    Ownership: the handle returned by `allocate`, `allocate_like` or `copy` is the
    segment's *owner*.  Closing the owner unlinks the segment (through the manager,
    when one was given).  Without a manager, an owner that is garbage collected, or
    still open when its process exits, unlinks too, so nothing outlives the program.
    With a manager, the manager unlinks whatever is left when it shuts down.  Handles
    made by `attach` or by unpickling are never owners: closing them never unlinks
    (except the handle `transfer` returns, whose receiver becomes the owner).
    Each process keeps one mapping per segment and reuses it for every handle (see
    `release_cached_mappings`).

    Arrays returned by `as_array` keep their memory mapped for as long as they live,
    even after `close`; the segment's name is what `close` (or `unlink`) removes.

    Examples
    --------
    >>> import numpy as np
    >>> from shared_memory_array import SharedMemoryArray
    >>> with SharedMemoryArray.copy(None, np.arange(6.0).reshape(2, 3)) as shared:
    ...     view = shared.as_array()
    ...     float(view.sum())
    15.0
    """

    # Class-level defaults: handles are built by _make(), which sets only the rest.
    _mapped: Bytes | None = None  # the whole segment; holds the mapping
    _users: list[weakref.ref[Any]] | None = None  # live handles of this process over it
    _closed = False
    _owner_pid = 0
    _finalizer: util.Finalize | None = None
    _manager: _keepers.ManagerLink | None = None
    _array: npt.NDArray[Any] | None = None  # built by the first as_array()
    _reduced: tuple[Any, ...] | None = None  # what __reduce__ returns, once built
    _sending = False  # made by transfer(): pickles as a hand-over of ownership
    _refused: Exception | None = None  # why a received hand-over failed: raised at first use
    _packed: bytes | None = None  # what `_unpack` made it from

    _spec: _Spec  # what the handle is and pickles; everything above is this process's

    def __init__(self) -> None:
        raise TypeError(
            "use SharedMemoryArray.allocate(), allocate_like(), copy() or attach() to "
            "make a SharedMemoryArray"
        )

    @classmethod
    def _make(cls: type[_Handle], spec: _Spec, segment: Bytes | None) -> _Handle:
        self = cls.__new__(cls)
        self._spec = spec
        self._mapped = segment
        return self

    # ------------------------------------------------------------------ creation

    @classmethod
    def allocate(
        cls,
        manager: object,
        shape: ShapeLike,
        dtype: npt.DTypeLike = np.float64,
        *,
        order: Order = "C",
        name: str | None = None,
        backend: Backend | None = None,
    ) -> SharedMemoryArray[Any]:
        """Make a new zero-filled shared array and return its owner handle.

        Parameters
        ----------
        manager : multiprocessing.managers.SharedMemoryManager or None
            ``None``: the returned owner handle alone decides the segment's life.
            It unlinks the segment when it is closed, garbage collected, or still
            open when this process exits (after ``multiprocessing`` has joined the
            non-daemon child processes); if the process is killed, Python's
            resource tracker unlinks it.  Or a started ``SharedMemoryManager``
            (the standard one, or `shared_memory_array.SharedMemoryManager`): the
            segment is unlinked when the owner is closed, or when the manager
            shuts down.
        shape : int or sequence of int
            Shape of the array: integers, or anything ``operator.index`` takes
            (NumPy integers, say), none negative, at most 32 of them.  0-d
            (``()``) and empty arrays are allowed.
        dtype : str or numpy.dtype, default numpy.float64
            Anything ``numpy.dtype()`` accepts, without Python objects: booleans,
            numbers, ``datetime64`` and ``timedelta64``, byte and unicode strings
            with a length, void, byte-swapped and structured dtypes.  A subarray
            dtype such as ``("f4", (3,))`` is folded into the shape, as NumPy does.
        order : 'C' or 'F', default 'C'
            Memory layout: row-major (C) or column-major (Fortran).  Arrays of
            fewer than two dimensions have one layout whatever the order.
        name : str, optional
            Name of the new segment: 1 to 255 characters (30 on macOS) from
            ``A-Z a-z 0-9 _ . -``, not starting with ``.`` or ``-``.  By default a
            fresh ``sma_<pid>_<16 hex digits>`` (memfd: ``sma_<pid>_fd<n>_<16 hex
            digits>``, a form chosen names cannot take).
        backend : {'auto', 'named', 'memfd'}, optional
            The kind of segment (`backend`).  ``'named'``: a file in ``/dev/shm``,
            there until unlinked.  ``'memfd'`` (Linux): memory that no ``/dev/shm``
            mount limits and that the kernel frees once no process uses it;
            other processes of this user attach it while this process holds it
            (see docs/how-to.md, "Share past a small /dev/shm").  ``'auto'``:
            named while ``/dev/shm`` has room for the array and a margin (an
            eighth of it, at least 16 MiB), memfd otherwise.  By default the
            environment variable ``SHARED_MEMORY_ARRAY_BACKEND``, else
            ``'auto'``; with a ``manager`` or a ``name``, those mean named.

        Returns
        -------
        SharedMemoryArray
            The owner handle.

        Raises
        ------
        TypeError
            ``manager`` is neither ``None`` nor a ``SharedMemoryManager``, or
            ``dtype`` is not a data type NumPy understands.
        SharedMemoryArrayError
            ``manager`` is not running: it was never started (call ``start()``,
            or use it in a ``with`` block), or it was shut down.
        InvalidNameError
            ``name`` breaks the rules above.
        SegmentExistsError
            A segment called ``name`` exists already; it is left untouched.
        LayoutError
            ``shape`` is not integers, has a negative dimension or more than 32,
            or is larger than this platform can address; or ``order`` is neither
            ``'C'`` nor ``'F'``.
        UnsupportedDtypeError
            The segment's header could not describe ``dtype`` to another process:
            it holds Python objects (their pointers mean nothing there), has size
            0 (``"S"`` or ``"U"`` without a length), carries metadata (h5py's enum
            dtypes do: share ``array.view(np.dtype(array.dtype.str))`` instead),
            or has structured fields that go back in memory or overlap, nested
            fields included.  Padding between fields is fine.
        OutOfSharedMemoryError
            ``/dev/shm`` cannot hold the segment, or has no inode left for it
            (memfd: the memory, or the container's memory limit, is exhausted).
            Nothing is left behind.
        ValueError
            ``backend``, or ``SHARED_MEMORY_ARRAY_BACKEND``, is none of the kinds.
        OSError
            ``backend='memfd'`` where this system has no ``memfd_create`` (not
            Linux), or this process has as many files open as it may.
        """
        dims, dt = _layout.normalize(shape, dtype)
        return cls._create(manager, dims, dt, _fortran(order), _checked_name(name), None, backend)

    @classmethod
    def allocate_unsafe(
        cls,
        manager: object,
        shape: ShapeLike,
        dtype: npt.DTypeLike = np.float64,
        *,
        order: Order = "C",
        name: str | None = None,
        backend: Backend | None = None,
    ) -> SharedMemoryArray[Any]:
        """`allocate` for arguments already checked: no normalisation, the same safety.

        Skipped: ``shape`` is used as given (an ``int`` or a tuple of non-negative
        ``int``; no ``operator.index``, no range checks), a subarray dtype is not
        folded into the shape (pass the base dtype and the full shape), ``name``
        is not checked against the rules of `allocate`, and any ``order`` other
        than ``'F'`` means C order.

        Kept: ``manager`` is checked; the dtype is, as by `allocate`
        (`UnsupportedDtypeError`); a name the system would read as another, with a
        NUL character or a ``/``, or ``.`` or ``..``, raises `InvalidNameError`;
        the segment is made and reserved as by `allocate`, and arrays from the
        handle stay within it.  Returns and other errors are those of `allocate`.
        """
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        dt = _layout.normalize_dtype(dtype)
        return cls._create(manager, dims, dt, order == "F", name, None, backend)

    @classmethod
    def allocate_like(
        cls,
        manager: object,
        template: npt.ArrayLike,
        *,
        name: str | None = None,
        backend: Backend | None = None,
    ) -> SharedMemoryArray[Any]:
        """Make a zero-filled shared array shaped like ``template``; return its owner handle.

        The new array has the shape and dtype of ``template``, and its order:
        Fortran if ``template`` has two or more dimensions and is
        Fortran-contiguous but not C-contiguous, else C.  The values are not
        copied (that is `copy`).

        Parameters
        ----------
        manager : multiprocessing.managers.SharedMemoryManager or None
            ``None`` for the owner handle to own the segment alone, or a started
            ``SharedMemoryManager`` that unlinks it at shutdown (see `allocate`).
        template : array_like
            An array, or anything ``numpy.asarray`` takes.
        name : str, optional
            Name of the new segment (rules in `allocate`); by default a fresh
            ``sma_<pid>_<16 hex digits>``.
        backend : {'auto', 'named', 'memfd'}, optional
            The kind of segment: see `allocate`.

        Returns
        -------
        SharedMemoryArray
            The owner handle.

        Raises
        ------
        TypeError
            ``manager`` is neither ``None`` nor a ``SharedMemoryManager``.
        SharedMemoryArrayError
            ``manager`` is not running (never started, or shut down).
        InvalidNameError
            ``name`` breaks the rules given in `allocate`.
        SegmentExistsError
            A segment called ``name`` exists already; it is left untouched.
        LayoutError
            ``template`` has more than 32 dimensions (NumPy 2 allows 64), or is
            larger than this platform can address.
        UnsupportedDtypeError
            ``template``'s dtype cannot be shared (see `allocate`).
        OutOfSharedMemoryError
            ``/dev/shm`` cannot hold the segment, or has no inode left for it.
            Nothing is left behind.
        """
        array = np.asarray(template)
        dims, dt = _layout.normalize(array.shape, array.dtype)
        return cls._create(
            manager, dims, dt, _layout.is_fortran(array), _checked_name(name), None, backend
        )

    @classmethod
    def allocate_like_unsafe(
        cls,
        manager: object,
        template: npt.ArrayLike,
        *,
        name: str | None = None,
        backend: Backend | None = None,
    ) -> SharedMemoryArray[Any]:
        """`allocate_like` for arguments already checked: no normalisation, the same safety.

        Skipped: the shape is not checked, and ``name`` is not checked against
        the rules of `allocate`.  Kept: ``manager`` and the dtype are checked as
        by `allocate`, and a name with a NUL character or a ``/``, or ``.`` or
        ``..``, raises `InvalidNameError`.  Returns and other errors are those
        of `allocate_like`.
        """
        array = np.asarray(template)
        dt = _layout.normalize_dtype(array.dtype)
        return cls._create(manager, array.shape, dt, _layout.is_fortran(array), name, None, backend)

    @classmethod
    def copy(
        cls,
        manager: object,
        data: npt.ArrayLike,
        *,
        name: str | None = None,
        backend: Backend | None = None,
    ) -> SharedMemoryArray[Any]:
        """Copy ``data`` into a new shared array and return its owner handle.

        Any array works, contiguous or not (slices with steps, transposes,
        negative strides, broadcast arrays): the shared array holds equal values,
        in Fortran order if ``data`` has two or more dimensions and is
        Fortran-contiguous but not C-contiguous, else in C order.  The bytes are
        written straight into the new segment, a non-contiguous ``data`` in
        blocks of about 16 MiB whatever its shape, so there is never a full
        temporary copy.  A Ctrl-C during the copy is held until the current block
        is written, then stops it and leaves nothing behind.  On Linux the
        segment is written under a draft name and renamed to its name once
        complete, so no process can attach it half written.

        Parameters
        ----------
        manager : multiprocessing.managers.SharedMemoryManager or None
            ``None`` for the owner handle to own the segment alone, or a started
            ``SharedMemoryManager`` that unlinks it at shutdown (see `allocate`).
        data : array_like
            An array, or anything ``numpy.asarray`` takes.
        name : str, optional
            Name of the new segment (rules in `allocate`); by default a fresh
            ``sma_<pid>_<16 hex digits>``.
        backend : {'auto', 'named', 'memfd'}, optional
            The kind of segment: see `allocate`.

        Returns
        -------
        SharedMemoryArray
            The owner handle.

        Raises
        ------
        TypeError
            ``manager`` is neither ``None`` nor a ``SharedMemoryManager``.
        SharedMemoryArrayError
            ``manager`` is not running (never started, or shut down).
        InvalidNameError
            ``name`` breaks the rules given in `allocate`.
        SegmentExistsError
            A segment called ``name`` exists already; it is left untouched.
        LayoutError
            ``data`` has more than 32 dimensions (NumPy 2 allows 64), or is
            larger than this platform can address.
        UnsupportedDtypeError
            ``data``'s dtype cannot be shared (see `allocate`); nothing was
            written.
        OutOfSharedMemoryError
            ``/dev/shm`` cannot hold the segment, or has no inode left for it.
            Nothing is left behind.

        Examples
        --------
        >>> import numpy as np
        >>> from shared_memory_array import SharedMemoryArray
        >>> data = np.arange(12).reshape(3, 4)
        >>> with SharedMemoryArray.copy(None, data[:, ::2]) as shared:
        ...     shared.as_array().tolist()
        [[0, 2], [4, 6], [8, 10]]
        """
        array = np.asarray(data)
        dims, dt = _layout.normalize(array.shape, array.dtype)
        return cls._create(
            manager, dims, dt, _layout.is_fortran(array), _checked_name(name), array, backend
        )

    @classmethod
    def copy_unsafe(
        cls,
        manager: object,
        data: npt.ArrayLike,
        *,
        name: str | None = None,
        backend: Backend | None = None,
    ) -> SharedMemoryArray[Any]:
        """`copy` for arguments already checked: no normalisation, the same safety.

        Skipped: the shape is not checked, and ``name`` is not checked against
        the rules of `allocate`.  Kept: ``manager`` and the dtype are checked as
        by `allocate`, a name with a NUL character or a ``/``, or ``.`` or ``..``,
        raises `InvalidNameError`, and the copy is written as by `copy`.
        Returns and other errors are those of `copy`.
        """
        array = np.asarray(data)
        dt = _layout.normalize_dtype(array.dtype)
        return cls._create(
            manager, array.shape, dt, _layout.is_fortran(array), name, array, backend
        )

    @classmethod
    def _create(
        cls,
        manager: object,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        fortran: bool,
        name: str | None,
        source: np.ndarray[Any, Any] | None,
        backend: Backend | None,
    ) -> SharedMemoryArray[Any]:
        link = None if manager is None else _keepers.manager_link(manager)
        if (link is not None or name is not None) and backend != "memfd":
            backend = "named"  # a manager keeps, and a chosen name is, a named segment
        elif backend == "memfd" and name is not None:
            raise InvalidNameError(
                f"memfd segments take no chosen name (got {name!r}): their name says "
                "where they are; pass backend='named' to choose one",
                segment=name,
            )
        elif backend == "memfd" and link is not None:
            raise TypeError(
                "a SharedMemoryManager cannot keep a memfd segment (it goes with its "
                "creator); pass manager=None, or backend='named'"
            )
        fortran = fortran and len(shape) > 1  # one layout for 0-d and 1-d arrays
        keeper = os.getpid() if link is None else link.pid
        # Until the handle and its finalizer exist, a Ctrl-C would leak the segment;
        # it comes between the blocks of a copy instead, or once the handle exists.
        with _interrupts.deferred():
            name, mapped = _write.create(
                name, shape, dtype, fortran, source, keeper=keeper, backend=backend
            )
            assert mapped.layout is not None  # a segment made here has a header
            self = cls._make(_Spec(name, mapped.layout, identity=mapped.identity), None)
            self._use(mapped)
            self._array = mapped.array
            try:
                if link is None:
                    _keepers.register_creator(name)
                    # exitpriority -1: at exit, after multiprocessing has joined the
                    # non-daemon children that may still use the segment (issue 10).
                    self._finalizer = util.Finalize(
                        self, _release, args=(name, os.getpid(), mapped.identity), exitpriority=-1
                    )
                else:
                    _keepers.manager_track(link, name)
                    self._manager = link
            except BaseException:
                _segment.unlink(name)
                _cache.forget(name)
                raise
            self._owner_pid = os.getpid()
            if _interrupts.pending():  # the caller will never get the handle
                self.close()
        return self

    @classmethod
    def attach(
        cls,
        name: str,
        shape: ShapeLike | None = None,
        dtype: npt.DTypeLike | None = None,
        *,
        order: Order | None = None,
        readonly: bool = False,
        allow_untrusted: bool = False,
    ) -> SharedMemoryArray[Any]:
        """Attach to an existing segment by name; the handle is not an owner.

        Closing the handle never unlinks the segment, and attaching never
        registers it with Python's resource tracker, so this process's exit
        cannot destroy it.  A segment made by this library describes itself: its
        shape, dtype and order are read from its header, and any given here are
        compared with it.  A segment made by other means (for example
        ``multiprocessing.shared_memory``) has no header: ``shape`` and ``dtype``
        are then required, ``order`` defaults to C, and the array starts at the
        segment's first byte.  Attaching such a segment, read-only or not, also
        reserves its memory if it is sparse (on Linux), so that using it later
        cannot crash with ``SIGBUS``.

        Parameters
        ----------
        name : str
            The segment's name: the `name` of the creator's handle.
        shape : int or sequence of int, optional
            The expected shape; required for a segment without header.
        dtype : str or numpy.dtype, optional
            The expected dtype; required for a segment without header.
        order : 'C' or 'F', optional
            The expected memory order.
        readonly : bool, default False
            Map the segment read-only: arrays from `as_array` cannot be written or
            made writeable (the memory itself is mapped without write access), and
            the handle pickles as read-only too.
        allow_untrusted : bool, default False
            Also attach a segment that another user owns, or that users other
            than its owner may write to (anyone can create files in ``/dev/shm``,
            so such a segment may have been planted under this name).

        Returns
        -------
        SharedMemoryArray
            A handle that is not an owner.

        Raises
        ------
        InvalidNameError
            ``name`` breaks the rules given in `allocate`.
        SegmentNotFoundError
            No segment has this name (never created, or already unlinked), or
            what has it is not a regular file (a FIFO, a symbolic link, a
            directory): refused at once, without blocking.
        UntrustedSegmentError
            The segment belongs to another user, or users other than its owner
            may write to it, and ``allow_untrusted`` is False.  A segment this
            process has mapped already (one it made, say) is not checked again.
        LayoutError
            The given shape, dtype or order differ from the header's; the header
            is corrupt, or in a newer format than this version reads; or the
            segment has no header and ``shape`` or ``dtype`` is missing, or it is
            too small for them.  Nothing is unlinked.
        UnsupportedDtypeError
            The given ``dtype`` cannot be shared (see `allocate`).
        OutOfSharedMemoryError
            The segment has no header and is sparse, and ``/dev/shm`` cannot hold
            the memory it needs.
        PermissionError
            This user may not open the segment at all (another user's, with mode
            0600).  Other errors of the operating system also pass unchanged.
        """
        name = _names.validate(name)
        mapped = _cache.attach(  # the name is validated above
            name, readonly=readonly, validate=False, trusted_only=not allow_untrusted
        )
        layout = _resolve(name, mapped, shape, dtype, order, validate=True)
        return cls._from_mapped(name, layout, mapped, readonly)

    @classmethod
    def attach_unsafe(
        cls,
        name: str,
        shape: ShapeLike | None = None,
        dtype: npt.DTypeLike | None = None,
        *,
        order: Order | None = None,
        readonly: bool = False,
        allow_untrusted: bool = False,
    ) -> SharedMemoryArray[Any]:
        """`attach` for arguments already checked: no comparison with the header.

        Skipped: ``name`` is not checked against the rules of `allocate`.  For a
        segment made by this library, the header's shape, dtype and order are
        used and the arguments are ignored, not compared.  For a segment without
        header, ``shape`` and ``dtype`` are used as given, not normalised (a dtype
        holding Python objects is still refused); any ``order`` other than ``'F'``
        means C order.

        Kept: a name the system would read as another (empty, with a NUL
        character or a ``/``, or ``.`` or ``..``) raises `InvalidNameError`; a name
        that leads to something other than a segment raises
        `SegmentNotFoundError`; untrusted segments raise `UntrustedSegmentError`
        unless ``allow_untrusted=True``; a header is still read and checked
        (`LayoutError` if corrupt or newer); a segment without header still needs
        ``shape`` and ``dtype``, and raises `LayoutError` if too small for them;
        and arrays from the handle stay within the segment.  Returns and other
        errors are those of `attach`.
        """
        mapped = _cache.attach(
            name, readonly=readonly, validate=False, trusted_only=not allow_untrusted
        )
        layout = _resolve(name, mapped, shape, dtype, order, validate=False)
        return cls._from_mapped(name, layout, mapped, readonly)

    @classmethod
    def _from_mapped(
        cls, name: str, layout: Layout, mapped: _cache.Mapped, readonly: bool
    ) -> SharedMemoryArray[Any]:
        self = cls.__new__(cls)
        self._spec = _Spec(name, layout, None, mapped.identity, readonly, None)
        self._use(mapped)
        if layout == mapped.layout:
            self._array = mapped.array
        return self

    # ------------------------------------------------------------------ access

    def as_array(self) -> npt.NDArray[_ScalarT_co]:
        """Return a NumPy array over the shared memory, without copying.

        Writes through it are seen by every process that has the segment mapped.
        Each call returns a new ``numpy.ndarray`` object over the same memory,
        covering the region for a region handle.  The array keeps the memory
        mapped for as long as it lives, even after `close` or `unlink`.

        A handle that came from unpickling, or from `as_readonly`, maps the segment
        at its first use (this method, or indexing, `lock` or a NumPy conversion,
        which call it), and checks its pickled shape, dtype and order against the
        segment's header: the errors below marked "first use" come then.

        Returns
        -------
        numpy.ndarray
            The array, read-only if the handle is.

        Raises
        ------
        ClosedHandleError
            The handle was closed.
        SegmentNotFoundError
            First use: the segment was unlinked, or its name now belongs to a
            different segment.
        ForeignHostError
            First use: the segment cannot be found here, and the handle was
            pickled on another host (shared memory never crosses hosts).
        LayoutError
            First use: the pickled shape, dtype or order do not match the
            segment; its header is corrupt or in a newer format; or a pickled
            region does not fit the array.
        OutOfSharedMemoryError
            First use, segment without header: its memory could not be reserved.
        InvalidNameError
            First use: the pickle holds an invalid name (it was tampered with).
        """
        array = self._array
        if array is None:
            array = self._array = self._view()
        return array.view()  # a new array object each call, over the same memory

    def _view(self) -> npt.NDArray[_ScalarT_co]:
        whole = self._attach_lazily() if self._mapped is None else None
        segment = self._mapped
        if segment is None:  # closed by another thread meanwhile
            raise self._closed_error()
        region = self._spec.region
        if region is None:
            return whole if whole is not None else self._spec.layout.view(segment)
        layout = self._spec.layout
        dtype, offset, nbytes = layout.dtype, layout.offset, layout.nbytes
        data = segment[offset : offset + nbytes]
        try:  # checked here first: NumPy's own check overflows on huge strides
            if region.fits(nbytes, dtype.itemsize):
                return np.ndarray(
                    region.shape, dtype, buffer=data, offset=region.offset, strides=region.strides
                )
        except (ValueError, TypeError):
            pass
        raise LayoutError(
            f"region {region} does not fit in segment {self._spec.name!r} ({nbytes} bytes of data)",
            segment=self._spec.name,
        )

    def __getitem__(self, key: Any) -> SharedMemoryArray[_ScalarT_co]:
        """Return a handle to a region of the array, such as ``shared[1000:2000]``.

        The region handle refers to the same memory (its `as_array` is a view of
        it), pickles as small as any handle, so a task can receive just its own
        part, is never an owner, keeps this handle's read-only flag, has the
        region's `shape`, `ndim`, `size` and `nbytes`, and can be indexed again.
        Indexing with integers only gives a 0-d region (shape ``()``), not a
        scalar.

        Parameters
        ----------
        key : int, slice, Ellipsis, None or a tuple of them
            Basic indexing only.

        Returns
        -------
        SharedMemoryArray
            The region handle.

        Raises
        ------
        TypeError
            ``key`` is not basic indexing: lists, booleans, strings, and NumPy
            arrays, even 0-d ones such as ``shared[np.array(2)]``, which NumPy
            would treat as fancy indexing and answer with a copy.  Index the
            array from `as_array` instead.
        IndexError
            An index is out of range, or there are too many (raised by NumPy).
        ClosedHandleError
            The handle was closed.
        LayoutError
            First use of an unpickled handle: its region does not fit the array,
            or has strides too large to compute with (a tampered pickle).  The
            other first-use errors are those of `as_array`.

        Examples
        --------
        >>> import numpy as np
        >>> from shared_memory_array import SharedMemoryArray
        >>> with SharedMemoryArray.copy(None, np.arange(20).reshape(4, 5)) as shared:
        ...     row, corner = shared[2], shared[:2, -2:]
        ...     row.shape, row.as_array().tolist(), corner.as_array().tolist(), row.owner
        ((5,), [10, 11, 12, 13, 14], [[3, 4], [8, 9]], False)
        """
        parts = tuple(_basic_index(part) for part in (key if isinstance(key, tuple) else (key,)))
        array = self.as_array()
        # A trailing Ellipsis makes integer-only indexing return a 0-d view, not a scalar.
        view = array[parts if Ellipsis in parts else (*parts, Ellipsis)]
        segment = self._mapped
        if segment is None:  # closed by another thread meanwhile
            raise self._closed_error()
        start = segment.__array_interface__["data"][0] + self._spec.layout.offset
        # NumPy leaves an empty view's pointer anywhere (even before the data): no bytes.
        offset = view.__array_interface__["data"][0] - start if view.size else 0
        region = Region(offset, view.shape, view.strides)
        handle = type(self)._make(self._spec._replace(region=region), self._mapped)
        if self._users is not None:
            handle._users = self._users
            _cache.add_user(self._users, handle)
        return handle

    def _attach_lazily(self) -> npt.NDArray[Any] | None:
        """Map the segment a pickle named; return the whole array if already built."""
        # Unpickling never maps anything (a failure there would surface inside the
        # executor's plumbing); the first use does, and checks what the pickle said.
        if self._closed:
            raise self._closed_error()
        if self._refused is not None:
            raise self._refused.with_traceback(None)
        name = self._spec.name  # validated by the cache before anything is opened
        try:
            mapped = _cache.attach(name, self._spec.identity, readonly=self._spec.readonly)
        except SegmentNotFoundError as exc:
            raise self._foreign_or(exc) from None
        pinned = self._spec.identity is not None
        if not pinned:  # pickled by a release that sent none
            self._spec, self._reduced = self._spec._replace(identity=mapped.identity), None
        found, wanted = mapped.layout, self._spec.layout
        if found is wanted or (
            found is not None
            and found.shape == wanted.shape
            and found.dtype == wanted.dtype
            and found.fortran == wanted.fortran
        ):
            # the common case: the pickle matches the header
            if found is not wanted:  # else an earlier copy of this pickle was checked
                self._spec = self._spec._replace(layout=found, identity=mapped.identity)
                if self._packed is not None and pinned:  # later copies start from here
                    _remember_unpacked(self._packed, self._spec)
            self._use(mapped)
            return mapped.array
        shape, dtype, fortran, _ = self._spec.layout
        layout = _resolve(name, mapped, shape, dtype, "F" if fortran else "C", validate=True)
        self._spec, self._reduced = self._spec._replace(layout=layout), None
        self._use(mapped)
        return None

    def _use(self, mapped: _cache.Mapped) -> None:
        """Take this process's cached mapping, counted among its live handles."""
        self._mapped = mapped.segment
        self._users = mapped.users
        _cache.add_user(mapped.users, self)

    def _closed_error(self) -> ClosedHandleError:
        return ClosedHandleError(
            f"shared array {self._spec.name!r} is closed", segment=self._spec.name
        )

    def _foreign_or(self, exc: SegmentNotFoundError) -> SegmentNotFoundError:
        """`ForeignHostError` if this handle was pickled on another host, else ``exc``."""
        here = host_key()
        if self._spec.host is None or self._spec.host == here:
            return exc
        return ForeignHostError(
            f"shared array {self._spec.name!r} lives on another host ({self._spec.host}), not on "
            f"this one ({here}): shared memory never crosses hosts; use "
            "shared_memory_array.dask.publish() to place a copy on every host",
            segment=self._spec.name,
            host=here,
            hosts=(self._spec.host,),
        )

    def __array__(
        self, dtype: npt.DTypeLike | None = None, copy: bool | None = None
    ) -> npt.NDArray[Any]:
        """NumPy conversion: ``np.asarray(handle)`` shares, ``np.array(handle)`` copies.

        With NumPy 2 ``copy=`` semantics: ``np.asarray(handle)`` is a view of the
        shared memory, as `as_array` gives; ``np.array(handle)`` is an
        independent copy; with another ``dtype`` the result is a converted copy,
        and ``copy=False`` then raises ``ValueError``.  Other errors are those of
        `as_array`.

        Examples
        --------
        >>> import numpy as np
        >>> from shared_memory_array import SharedMemoryArray
        >>> with SharedMemoryArray.copy(None, np.arange(4.0)) as shared:
        ...     view, copied = np.asarray(shared), np.array(shared)
        ...     shared.as_array()[0] = 9.0
        ...     view.tolist(), copied.tolist()
        ([9.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0])
        """
        array = self.as_array()
        if copy:
            return np.array(array, dtype=dtype, copy=True)
        if dtype is None or np.dtype(dtype) == array.dtype:
            return array
        if copy is False:
            raise ValueError(
                f"shared array {self._spec.name!r} has dtype {array.dtype}; converting it to "
                f"{np.dtype(dtype)} needs a copy"
            )
        return array.astype(dtype)

    @property
    def name(self) -> str:
        """Name of the shared memory segment; `attach` takes it."""
        return self._spec.name

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the array (of the region, for a region handle)."""
        return self._spec.layout.shape if self._spec.region is None else self._spec.region.shape

    @property
    def dtype(self) -> np.dtype[_ScalarT_co]:
        """Data type of the array."""
        return self._spec.layout.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return _layout.count(self.shape)

    @property
    def nbytes(self) -> int:
        """Size of the array's data in bytes (of the region, for a region handle).

        A segment made by this library is larger by its header, usually 4096
        bytes (one page).
        """
        return self.size * self._spec.layout.dtype.itemsize

    @property
    def owner(self) -> bool:
        """Whether closing this handle unlinks the segment (only in the creating process)."""
        return self._owner_pid != 0 and self._owner_pid == os.getpid()  # 0: never an owner

    @property
    def backend(self) -> Literal["named", "memfd"]:
        """The kind of segment: ``'named'`` (in ``/dev/shm``) or ``'memfd'`` (see `allocate`)."""
        return "memfd" if _segment.is_memfd(self._spec.name) else "named"

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Release this handle; if it is the owner, also unlink the segment.

        The owner unlinks directly, or through the manager it was made with.
        Calling ``close`` again does nothing, and it prints nothing.

        An explicit ``close`` of this process's last handle on a segment
        (attached, unpickled and region handles all count) also drops this
        process's cached mapping of it (see `release_cached_mappings`).  Handles
        that are garbage collected without ``close`` leave the mapping cached, for
        the next handle to the same segment to reuse.

        Arrays already taken from `as_array` stay valid and keep the memory mapped
        until the last of them is gone (so ``close`` never raises
        ``BufferError``).  After ``close``, `as_array` raises `ClosedHandleError`.
        """
        if self._closed:
            return
        if not self.owner:
            self._close(owner=False)
            return
        with _interrupts.deferred():  # a Ctrl-C half way would leak the segment
            self._close(owner=True)

    def _close(self, owner: bool) -> None:
        self._closed = True
        segment, users = self._mapped, self._users
        self._mapped = self._array = self._users = None
        if owner:
            self._unlink()
        elif users is not None and segment is not None:
            _cache.let_go(self._spec.name, self._spec.readonly, segment, self)

    def unlink(self) -> None:
        """Remove the segment's name now, without closing the handle; only the owner may.

        Every existing mapping, in every process, this handle's included, keeps
        working.  No new process can attach, and unpickled handles not used yet
        raise `SegmentNotFoundError` at first use.  Afterwards `owner` is False,
        and `close` no longer unlinks anything.

        Raises
        ------
        NotOwnerError
            This handle is not the owner: it was attached, unpickled, or made by
            indexing or `as_readonly`; it is a forked child's copy of the owner; or
            it has unlinked already.
        """
        if not self.owner:
            raise NotOwnerError(
                f"shared array {self._spec.name!r} can only be unlinked by its owner, the "
                "handle that created it, in the process that created it",
                segment=self._spec.name,
            )
        self._unlink()

    def _unlink(self) -> None:
        with _interrupts.deferred():  # a Ctrl-C half way would leak the segment
            self._owner_pid = 0
            if self._manager is not None:
                if _still_ours(self._spec.name, self._spec.identity):
                    _keepers.manager_release(self._manager, self._spec.name)
                _cache.forget(self._spec.name)
            elif self._finalizer is not None:
                self._finalizer()  # _release()

    def transfer(self) -> SharedMemoryArray[_ScalarT_co]:
        """Hand the segment to whichever process unpickles the returned handle.

        The way to give an array made in one process to another, for example
        ``return out.transfer()`` from a pool task that made ``out`` with no
        manager: the process that unpickles the returned handle becomes the
        segment's owner (closing, garbage collection or exit there unlink it, and
        its crash cleanup covers it), and this process never unlinks it again.

        This handle is closed; arrays already taken from it stay valid.  The
        returned handle still unlinks the segment if it is garbage collected, or
        the process exits, before it was ever pickled.  Once pickled, the segment
        is in flight: this process may exit at once (``maxtasksperchild``, a
        shutdown) without removing it.  The receiver takes it atomically when it
        unpickles the handle, by renaming it to a name of its own (`name` then
        differs), so the handle can be received once: a second process unpickling
        the same bytes gets a handle whose first use raises
        `SegmentNotFoundError`; unpickling itself never fails.  A segment sent but
        never received (the receiver died, the message was dropped) is abandoned:
        the ``clean`` command removes it once this process has exited.

        A memfd segment (`backend`) lives only while some process holds it, so it
        is handed over differently: this process keeps it until the receiver
        has opened it, and its exit waits for that (10 seconds at most); the
        receiver claims it by recording itself in the segment's header, and its
        `name` then carries the receiver's pid.  What nobody receives is freed
        when this process exits.  A frozen segment cannot be transferred.

        Returns
        -------
        SharedMemoryArray
            A handle that is not an owner here and pickles as a hand-over.

        Raises
        ------
        NotOwnerError
            This handle is not the owner, or it was made with a manager (the
            manager keeps the segments it was given).
        ClosedHandleError
            The handle was closed.
        OSError
            Not on Linux: the hand-over renames the segment, which macOS cannot do;
            or the segment is a frozen memfd segment.

        Examples
        --------
        >>> import pickle
        >>> import numpy as np
        >>> from shared_memory_array import SharedMemoryArray
        >>> made = SharedMemoryArray.copy(None, np.arange(3.0))
        >>> sent = pickle.dumps(made.transfer())  # what a pool does with a result
        >>> received = pickle.loads(sent)  # in the receiving process: the owner now
        >>> received.owner, received.as_array().tolist()
        (True, [0.0, 1.0, 2.0])
        >>> received.close()
        """
        if self._closed:
            raise self._closed_error()
        if not _segment.CAN_RENAME:  # pragma: no cover - macOS
            raise OSError(errno.ENOTSUP, "transfer() needs Linux, where segments can be renamed")
        if not self.owner or self._manager is not None:
            raise NotOwnerError(
                f"shared array {self._spec.name!r} can only be transferred by its owner "
                "handle, in the process that owns it, and when it was made without a manager",
                segment=self._spec.name,
            )
        spec = self._spec
        if _segment.is_memfd(spec.name) and _segment.frozen(spec.name):
            raise OSError(
                errno.ENOTSUP,
                f"memfd segment {spec.name!r} is frozen, so it cannot be transferred (the "
                "receiver records itself in the segment); transfer it, then freeze it there",
            )
        with _interrupts.deferred():  # in between, nobody would unlink it
            if self._finalizer is not None:
                self._finalizer.cancel()
            self._finalizer, self._owner_pid = None, 0
            self._close(owner=False)
            sent = type(self)._make(spec, None)
            sent._sending = True
            sent._finalizer = util.Finalize(
                sent, _release, args=(spec.name, os.getpid(), spec.identity), exitpriority=-1
            )
        return sent

    def freeze(self) -> None:
        """Make the array read-only for good, in every process: memfd segments only.

        The segment is sealed (``F_SEAL_FUTURE_WRITE``, Linux 5.1+): from now on no
        process can map it writable, this one included, and nothing can undo it.
        This handle becomes read-only (`readonly`), and so do the handles pickled
        from it; handles pickled before raise `FrozenSegmentError` at first use
        unless read-only.  Arrays that exist already keep their mapping: take
        them again after freezing where writes must be impossible.

        Raises
        ------
        NotOwnerError
            This handle is not the owner.
        OSError
            The segment is a named one (``/dev/shm`` files cannot be sealed), or
            the kernel is older than 5.1 (``EINVAL``).
        """
        if self._closed:
            raise self._closed_error()
        if not self.owner:
            raise NotOwnerError(
                f"shared array {self._spec.name!r} can only be frozen by its owner",
                segment=self._spec.name,
            )
        if not _segment.is_memfd(self._spec.name):
            raise OSError(
                errno.ENOTSUP,
                f"shared array {self._spec.name!r} is a named segment, which cannot be "
                "sealed: make it with backend='memfd' to freeze it",
            )
        _segment.freeze(self._spec.name)
        _cache.forget(self._spec.name)  # no handle of this process gets the writable mapping
        self._spec, self._reduced = self._spec._replace(readonly=True), None
        self._mapped = self._array = self._users = None  # mapped again read-only at next use

    @contextlib.contextmanager
    def managed(self: _Handle) -> Iterator[_Handle]:
        """Context manager that yields the handle and closes it on exit."""
        try:
            yield self
        finally:
            self.close()

    def __enter__(self: _Handle) -> _Handle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ protocols

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle the handle by reference: about 140 bytes, whatever the array's size.

        The pickle holds the segment's name, the shape, dtype and order, the
        region of a region handle, the read-only flag, the segment's identity (so
        that a segment unlinked and re-created under the same name is not taken
        for it) and the key of the host it was pickled on (see
        `shared_memory_array.dask.host_key`).  A structured dtype or a long name
        makes it longer.

        Unpickling maps nothing and never fails because of the segment: the
        handle maps it at first use, and the errors come then (see `as_array`).
        The unpickled handle is never an owner (a handle from `transfer` pickles
        as a hand-over instead: see there), reuses this process's mapping of
        the segment if there is one, and is not checked for trust as `attach` is:
        it carries its segment's identity and refuses any other.
        """
        if self._sending:
            return self._reduce_sending()
        # Built once per handle: a pool pickles the same handle for every task, in
        # the parent's one task-feeding thread.
        reduced = self._reduced
        if reduced is None:
            name, (shape, dtype, fortran, _), region, identity, readonly, host = self._spec
            args = (
                name,
                shape,
                _layout.dtype_token(dtype),
                fortran,
                None if region is None else tuple(region),
                None if identity is None else tuple(identity),  # plain tuples: no class to name
                readonly,
                host or host_key(),
            )
            # One bytes argument: the cheapest to pickle and unpickle, and the key
            # under which a receiving process keeps what it rebuilt (`_unpack`).
            reduced = self._reduced = (_unpack, (pickle.dumps(args, _PACK_PROTOCOL),))
        return reduced

    def _reduce_sending(self) -> tuple[Any, ...]:
        """Pickle a handle made by `transfer`: from now on its segment is in flight."""
        name, (shape, dtype, fortran, _), _, identity, _, host = self._spec
        with _interrupts.deferred():
            finalizer, self._finalizer = self._finalizer, None
            if finalizer is not None and finalizer.still_active():
                finalizer.cancel()
                if _segment.is_memfd(name):
                    _segment.send(name)  # held here until received
                else:
                    _keepers.unregister_creator(name)  # the receiver's tracker takes over
        assert identity is not None  # an owner's handle knows its segment
        token = _layout.dtype_token(dtype)
        return (_receive, (name, shape, token, fortran, tuple(identity), host or host_key()))

    @property
    def readonly(self) -> bool:
        """Whether this handle is read-only (`as_readonly`, or ``attach(readonly=True)``)."""
        return self._spec.readonly

    def as_readonly(self) -> SharedMemoryArray[_ScalarT_co]:
        """Return a read-only handle to the same array (or region); never an owner.

        Give it to workers that must not write: it pickles as read-only, and its
        arrays cannot be written or made writeable in any process.
        """
        return type(self)._make(self._spec._replace(readonly=True), None)

    def lock(
        self,
        *,
        shared: bool = False,
        timeout: float | None = None,
        blocking: bool = True,
        rows: int | slice | None = None,
    ) -> SegmentLock:
        """Return a lock on this array, or on a region of it, for use with ``with``.

        The lock works between any processes that have a handle (pickled, attached
        or created; fork, spawn, forkserver or unrelated) and between threads, and
        the kernel releases it at once if its holder dies, SIGKILL included.  It
        guards the bytes of this handle: a region handle (``shared[1000:2000].lock()``)
        or ``rows=`` locks only that part (for a strided region: the bytes between
        its first and last element), so writers of other regions are not blocked.
        Each lock object locks on its own: two of them exclude each other (unless
        both are shared) even in one thread.  `SegmentLock` tells how a held lock
        ends.

        Parameters
        ----------
        shared : bool, default False
            Take a shared (read) lock: many holders at once, none exclusive.
        timeout : float, optional
            Seconds to wait before raising `LockTimeoutError`; None, -1 or infinity
            wait forever.  NaN or another negative value raises ``ValueError``.
        blocking : bool, default True
            If False, raise `LockTimeoutError` at once when the lock is taken.
        rows : int or slice, optional
            Lock ``self[rows]`` instead of the whole array.

        Returns
        -------
        SegmentLock
            The lock, not held yet: ``with`` or `SegmentLock.acquire` takes it.

        Raises
        ------
        ClosedHandleError
            The handle was closed.  An unpickled handle is used here, so the
            other first-use errors of `as_array` come here too, and ``rows`` is
            indexed as by ``self[rows]``, with its errors.
        ValueError
            ``timeout`` is NaN, or negative other than -1.
        LockTimeoutError
            Taking the lock: another holder kept it past ``timeout``, or held it
            at all with ``blocking=False``.
        SegmentNotFoundError
            Taking the lock: the segment is gone, or its name now leads to
            something other than a segment, such as a FIFO (refused at once).
        RuntimeError
            Taking the lock while this lock object holds it already: locks are
            not reentrant.

        Examples
        --------
        >>> import numpy as np
        >>> from shared_memory_array import SharedMemoryArray
        >>> with SharedMemoryArray.allocate(None, (4, 3)) as shared:
        ...     with shared.lock(rows=slice(0, 2)):
        ...         shared.as_array()[0:2] += 1
        ...     with shared.lock(shared=True, timeout=1.0):
        ...         float(shared.as_array().sum())
        6.0
        """
        from ._lock import SegmentLock

        target = self if rows is None else self[rows]
        start, length = target._byte_range()
        return SegmentLock(
            self._spec.name, start, length, shared=shared, timeout=timeout, blocking=blocking
        )

    def _byte_range(self) -> tuple[int, int]:
        """The bytes of the segment this handle's array spans: ``(start, length)``."""
        self.as_array()  # attaches if needed: the data offset comes from the header
        base, region = self._spec.layout.offset, self._spec.region
        if region is None:
            return base, self._spec.layout.nbytes
        if 0 in region.shape:
            return base + region.offset, 0
        spans = [(n - 1) * stride for n, stride in zip(region.shape, region.strides)]
        low = region.offset + sum(min(0, span) for span in spans)
        itemsize = self._spec.layout.dtype.itemsize
        high = region.offset + sum(max(0, span) for span in spans) + itemsize
        return base + low, high - low

    def __repr__(self) -> str:
        """Identity, never data: name, shape, dtype and `owner`.

        Region, read-only and closed handles are marked, as in
        ``<SharedMemoryArray 'sma_4242_8c1f0e2b9a7d6c5e' shape=(3,) dtype=int64
        owner=False region readonly>``.
        """
        state = " region" if self._spec.region is not None else ""
        state += " readonly" if self._spec.readonly else ""
        state += " closed" if self._closed else ""
        return (
            f"<{type(self).__name__} {self._spec.name!r} shape={self.shape} "
            f"dtype={self.dtype} owner={self.owner}{state}>"
        )


def _basic_index(part: object) -> Any:
    """``part`` of a basic index, integers as ``int``; TypeError for anything else."""
    if part is None or part is Ellipsis or isinstance(part, slice):
        return part
    if not isinstance(part, (bool, np.bool_, np.ndarray)):  # a 0-d array indexes by copy
        try:
            return operator.index(part)  # type: ignore[arg-type]
        except TypeError:
            pass
    raise TypeError(
        "a region handle takes basic indexing only (integers, slices, ..., None), "
        f"got {type(part).__name__}; index the array from as_array() instead"
    )


def _checked_name(name: str | None) -> str | None:
    if name is not None and _segment.is_memfd(_names.validate(name)):
        raise InvalidNameError(
            f"segment name {name!r} has the form of a memfd segment's, which only the "
            "library gives: choose another",
            segment=name,
        )
    return name


def _resolve(
    name: str,
    mapped: _cache.Mapped,
    shape: ShapeLike | None,
    dtype: npt.DTypeLike | None,
    order: str | None,
    *,
    validate: bool,
) -> Layout:
    """Return the layout of a mapped segment: from its header, or from the arguments
    for a raw segment (one made without this library, data at offset 0)."""
    found = mapped.layout
    if found is not None:
        if not validate or (shape is None and dtype is None and order is None):
            return found  # nothing to compare
        if shape is None and dtype is None:
            dims, dt = found.shape, found.dtype
        else:  # together: a subarray dtype adds to the shape
            dims, dt = _layout.normalize(
                found.shape if shape is None else shape,
                found.dtype if dtype is None else dtype,
                name,
            )
        fortran = found.fortran if order is None else _fortran(order) and len(dims) > 1
        wanted = Layout(dims, dt, fortran, found.offset)
        if wanted != found:
            raise LayoutError(
                f"segment {name!r} holds {_describe(found)}, not {_describe(wanted)}",
                segment=name,
            )
        return found
    if shape is None or dtype is None:
        raise LayoutError(
            f"segment {name!r} was not made by shared-memory-array (it has no header): "
            "pass its shape and dtype",
            segment=name,
        )
    if validate:
        dims, dt = _layout.normalize(shape, dtype, name)
    else:
        # Safety stays: an object dtype would read pointers from shared memory.
        dt = _layout.normalize_dtype(dtype, name)
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
    fortran = False if order is None else _fortran(order) if validate else order == "F"
    layout = Layout(dims, dt, fortran and len(dims) > 1, 0)
    if layout.nbytes > mapped.segment.size:
        raise LayoutError(
            f"segment {name!r} has {mapped.segment.size} bytes, too small for "
            f"{_describe(layout)} ({layout.nbytes} bytes)",
            segment=name,
        )
    return layout


def _describe(layout: Layout) -> str:
    order = "Fortran" if layout.fortran else "C"
    return f"an array of shape {layout.shape}, dtype {layout.dtype}, {order} order"


def _rebuild(*fields: Any) -> SharedMemoryArray[Any]:
    """Rebuild a handle pickled by an earlier release (`_spec_of`'s arguments):
    never an owner, and nothing is mapped until used."""
    return SharedMemoryArray._make(_spec_of(*fields), None)


def _spec_of(
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype[Any] | str,
    fortran: bool,
    region: tuple[int, tuple[int, ...], tuple[int, ...]] | None = None,
    identity: tuple[int, ...] | None = None,
    readonly: bool = False,
    host: str | None = None,
) -> _Spec:
    """What a handle pickled with these fields is."""
    layout = Layout(shape, _layout.dtype_of_token(dtype), fortran, 0)
    if identity is not None:  # a tampered one matches no segment: an error at first use
        identity = Identity(*identity) if len(identity) == 3 else Identity(-1, -1, -1)
    part = None if region is None else Region(*region)
    return _Spec(name, layout, part, identity, readonly, host)


# What unpickled handles were rebuilt from, by their packed arguments: a pool's
# worker receives the same handle with task after task.  Cleared when full.
_unpacked: dict[bytes, _Spec] = {}
_UNPACKED_MAX = 256
_PACK_PROTOCOL = 4  # Python 3.4+; short opcodes for short strings


def _unpack(packed: bytes) -> SharedMemoryArray[Any]:
    """Unpickle a handle pickled by `SharedMemoryArray.__reduce__`: `_rebuild` with
    the arguments ``packed`` holds, each set of them parsed once per process.

    Once a handle from ``packed`` has been checked against its segment's header,
    later ones start from what the check found (`_attach_lazily`), which their
    first use then takes as checked while the same mapping serves them.
    """
    spec = _unpacked.get(packed)
    if spec is None:
        spec = _remember_unpacked(packed, _spec_of(*pickle.loads(packed)))
    handle: SharedMemoryArray[Any] = SharedMemoryArray.__new__(SharedMemoryArray)
    handle._spec, handle._packed = spec, packed
    return handle


def _remember_unpacked(packed: bytes, spec: _Spec) -> _Spec:
    if len(_unpacked) >= _UNPACKED_MAX and packed not in _unpacked:
        _unpacked.clear()
    _unpacked[packed] = spec
    return spec


def _receive(
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype[Any] | str,
    fortran: bool,
    identity: tuple[int, ...],
    host: str | None = None,
) -> SharedMemoryArray[Any]:
    """Unpickle a handle made by `SharedMemoryArray.transfer`: this process takes the
    segment and owns the handle.  Never raises: a failure is raised at first use."""
    handle = _rebuild(name, shape, dtype, fortran, None, identity, False, host)
    spec = handle._spec
    assert spec.identity is not None
    try:
        with _interrupts.deferred():  # in between, nobody would unlink it
            new = _transfer.claim(name, spec.identity)
            handle._spec = spec._replace(name=new)
            handle._owner_pid = os.getpid()
            handle._finalizer = util.Finalize(
                handle, _release, args=(new, os.getpid(), spec.identity), exitpriority=-1
            )
    except Exception as exc:  # an error here would kill a pool's result thread
        handle._refused = exc
    return handle


_rebuild.__module__ = _unpack.__module__ = _receive.__module__ = "shared_memory_array"
rebuild = _rebuild  # for other modules; pickles name it _rebuild
