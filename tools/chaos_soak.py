"""Chaos soak: owners and workers SIGKILLed at random, and never a wrong byte read.

    python tools/chaos_soak.py --seconds 60 [--seed N] [--workers K] [--owners M]

Owner processes make arrays of seeded random bytes (with no manager, the stdlib
``SharedMemoryManager`` or ours) and publish their handles; worker processes attach
and compare every byte, and write and re-read their own row of a scratch array.
Both are started by fork or spawn, and SIGKILLed at random.  At the end the driver
stops everything, runs ``clean_segments()`` and counts the segments this run's
processes made.  It exits 0 only if no byte read was wrong, no error or missed
deadline occurred, nothing unexpected reached stderr and no segment was left.
What it does and why, in detail: tools/README.md.  Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import multiprocessing as mp
import os
import random
import re
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import connection, managers, resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, NamedTuple

import numpy as np

from shared_memory_array import (
    SegmentNotFoundError,
    SharedMemoryArray,
    clean_segments,
    segment_info,
)
from shared_memory_array import SharedMemoryManager as OurManager

SHM = "/dev/shm"
RUN_SEGMENT = re.compile(r"(?:sma|\.sma_draft_\d+)_(\d+)_")  # group 1: the creator's pid
DTYPES = ("u1", "<i4", ">f8", "c8", "i2,<f4")  # big-endian and structured (6-byte) ones too
MAX_DIMS = (1, 30_000, 150, 30)  # per ndim: arrays of up to about 240 kB
SCRATCH_ROW = 4096  # bytes of a worker slot's row in a scratch array: seed, then pattern
MAX_OPEN = 8  # arrays an owner keeps open; beyond that it closes its oldest
RECENT = 12  # published arrays the driver picks tasks from
START_DEADLINE, TASK_DEADLINE, STOP_DEADLINE, EXIT_DEADLINE = 60.0, 30.0, 60.0, 15.0
TRACKER_WARNING = re.compile(r"resource_tracker: (There appear to be \d+ leaked shared_memory|'/)")

Outcome = tuple[str, int, str]  # "ok", "gone", "wrong" or "error"; wrong bytes; detail


class Pub(NamedTuple):
    """A published array: the handle sent to workers, and what its bytes must be."""

    handle: SharedMemoryArray[Any]  # the owner's, a region of it, or a read-only one
    seed: int
    shape: tuple[int, ...]
    dtype: str
    order: str
    region: tuple[int, int] | None  # rows [lo, hi) when the handle is a region
    readonly: bool

    def expected(self) -> np.ndarray[Any, Any]:
        whole = content(self.seed, self.shape, self.dtype, self.order)
        return whole if self.region is None else whole[self.region[0] : self.region[1]]


def content(seed: int, shape: tuple[int, ...], dtype: str, order: str) -> np.ndarray[Any, Any]:
    """The array published for ``seed``: random bytes, any dtype, C or Fortran order."""
    dt = np.dtype(dtype)
    raw = np.random.default_rng(seed).integers(0, 256, int(np.prod(shape)) * dt.itemsize, "u1")
    return raw.view(dt).reshape(shape, order="F" if order == "F" else "C")


def pattern(seed: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).integers(0, 256, SCRATCH_ROW - 8, dtype=np.uint8)


def compare(what: str, got: np.ndarray[Any, Any], expected: np.ndarray[Any, Any]) -> Outcome:
    differ = np.frombuffer(got.tobytes(), np.uint8) != np.frombuffer(expected.tobytes(), np.uint8)
    wrong = int(np.count_nonzero(differ))
    if wrong:
        first = int(np.argmax(differ))
        return "wrong", wrong, f"{wrong} of {differ.size} bytes wrong in {what}, first at {first}"
    return "ok", 0, ""


def own_resource_tracker() -> int:
    """Start a resource tracker for this process alone, as a program's main process has.

    Children share their parent's tracker, which would unlink a killed owner's
    segments only when the whole soak ends.  Returns the new tracker's pid.
    """
    tracker: Any = resource_tracker._resource_tracker
    if tracker._fd is not None:
        os.close(tracker._fd)
    tracker._fd = tracker._pid = None
    tracker.ensure_running()
    return int(tracker._pid)


def make_array(manager: Any, rng: np.random.Generator) -> tuple[SharedMemoryArray[Any], Pub]:
    ndim = int(rng.integers(len(MAX_DIMS)))
    shape = tuple(int(n) for n in rng.integers(0, MAX_DIMS[ndim], ndim))
    seed, dtype = int(rng.integers(2**62)), str(rng.choice(DTYPES))
    order: Any = "F" if ndim > 1 and rng.random() < 0.3 else "C"
    data, way = content(seed, shape, dtype, order), rng.integers(3)
    if way == 0:
        handle = SharedMemoryArray.allocate(manager, shape, dtype, order=order)
        handle.as_array()[...] = data
    elif way == 1:
        handle = SharedMemoryArray.copy(manager, data)
    else:  # from a strided source
        wide = np.zeros((*shape, 2), data.dtype)
        wide[..., 1] = data
        handle = SharedMemoryArray.copy(manager, wide[..., 1])
    pub, variant = Pub(handle, seed, shape, dtype, order, None, False), rng.integers(3)
    if variant == 1 and ndim and shape[0] > 1:
        lo = int(rng.integers(shape[0]))
        hi = int(rng.integers(lo, shape[0] + 1))
        return handle, pub._replace(handle=handle[lo:hi], region=(lo, hi))
    if variant == 2:
        return handle, pub._replace(handle=handle.as_readonly(), readonly=True)
    return handle, pub


def owner_main(conn: Connection, seed: int, kind: str, slots: int) -> None:
    """Make and publish arrays until told to stop or its random lifetime ends."""
    faulthandler.register(signal.SIGUSR1)
    tracker_pid = own_resource_tracker()
    rng = np.random.default_rng(seed)
    manager: Any = None
    if kind != "none":
        manager = OurManager() if kind == "ours" else managers.SharedMemoryManager()
        manager.start()
    scratch = SharedMemoryArray.allocate(manager, (slots, SCRATCH_ROW), np.uint8)
    conn.send(("ready", manager._process.pid if manager else 0, tracker_pid, scratch))
    handles = [scratch]
    end = time.monotonic() + rng.uniform(2, 20)
    while time.monotonic() < end and not conn.poll(rng.uniform(0.05, 0.3)):
        handle, pub = make_array(manager, rng)
        conn.send(("pub", pub))
        handles.append(handle)
        if len(handles) > MAX_OPEN:
            handles.pop(1).close()
    if rng.random() < 0.5:  # else left to the finalizers at exit, or to the manager
        for handle in handles:
            handle.close()
    if manager is not None:
        manager.shutdown()


def check_read(pub: Pub, by_name: bool) -> Outcome:
    """Read a published array, from its pickle or attached by name, and compare every byte."""
    handles = [pub.handle]
    try:
        handle = pub.handle
        if by_name:
            handle = SharedMemoryArray.attach(pub.handle.name, readonly=pub.readonly)
            handles.append(handle)
            if pub.region:
                handle = handle[pub.region[0] : pub.region[1]]
                handles.append(handle)
        got, expected = handle.as_array(), pub.expected()
        if got.shape != expected.shape or got.dtype != expected.dtype:
            return "error", 0, f"{handle!r}: {got.shape} {got.dtype}, not {expected.shape}"
        if pub.readonly and got.flags.writeable:
            return "error", 0, f"{handle!r}: a read-only handle gave a writeable array"
        return compare(handle.name, got, expected)
    finally:
        for handle in handles:
            handle.close()


def check_write(scratch: SharedMemoryArray[Any], slot: int, seed: int) -> Outcome:
    """Check this slot's row of a scratch array holds what its seed says, then rewrite it."""
    try:
        with scratch[slot] as row_handle:
            row = row_handle.as_array()
            last = int(row[:8].view(np.uint64)[0])  # 0: never written, or a write cut short
            if last:
                before = compare(f"{scratch.name}[{slot}] (last write)", row[8:], pattern(last))
                if before[0] != "ok":
                    return before
            row[:8].view(np.uint64)[0] = 0
            row[8:] = pattern(seed)
            row[:8].view(np.uint64)[0] = seed
            return compare(f"{scratch.name}[{slot}]", row[8:], pattern(seed))
    finally:
        scratch.close()


def guarded(check: Callable[..., Outcome], *args: Any) -> Outcome:
    """Run ``check``; a segment found gone is expected (its owner closed it or was killed)."""
    try:
        return check(*args)
    except Exception as exc:
        if type(exc) is SegmentNotFoundError:
            return "gone", 0, ""
        return "error", 0, traceback.format_exc(limit=-3)


def worker_main(conn: Connection) -> None:
    """Do the driver's tasks one at a time until told to stop."""
    faulthandler.register(signal.SIGUSR1)
    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the driver is gone
            return
        if task is None:
            return
        pub, by_name, scratch, slot, seed = task
        results = [guarded(check_read, pub, by_name)]
        if scratch is not None:
            results.append(guarded(check_write, scratch, slot, seed))
        conn.send(("done", results))


class DeadlineError(Exception):
    """A process missed a deadline: the soak stops."""


def start_time(pid: int) -> str | None:
    """The start time of live process ``pid`` (tells it from a later one with its pid)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else fields[19]


def kill(helper: tuple[int, str] | None) -> bool:
    """SIGKILL a process an owner started, unless it already ended."""
    if helper is None or start_time(helper[0]) != helper[1]:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(helper[0], signal.SIGKILL)
    return True


def wait_until(done: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@dataclass(eq=False)  # compared and hashed by identity
class Child:
    """An owner or a worker the driver started."""

    role: str
    slot: int
    method: str
    process: BaseProcess
    conn: Connection
    started: float
    kind: str  # an owner's manager: "none", "stdlib" or "ours"
    ready: bool = False
    killed: bool = False
    helpers: dict[str, tuple[int, str]] = field(default_factory=dict)  # (pid, start time)
    scratch: SharedMemoryArray[Any] | None = None
    task_sent: float = 0.0  # when its task was sent; 0: none


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.rng = args, random.Random(args.seed)
        self.children: dict[tuple[str, int], Child] = {}
        self.pids: set[int] = set()  # every process of the run: its segments carry one
        self.helpers: list[tuple[int, str, str]] = []  # (pid, start time, what) of owners'
        self.pubs: deque[tuple[Pub, SharedMemoryArray[Any] | None, Child]] = deque(maxlen=RECENT)
        self.stats: Counter[str] = Counter()
        self.errors: list[str] = []
        self.wrong = self.peak = 0

    def start(self, role: str, slot: int) -> None:
        method = self.rng.choice(("fork", "spawn"))
        context = mp.get_context(method)
        ours, theirs = context.Pipe()
        kind = self.rng.choice(("none", "stdlib", "ours")) if role == "owner" else ""
        args = (theirs, self.rng.getrandbits(63), kind, self.args.workers)
        target = owner_main if role == "owner" else worker_main
        process: BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=target, args=args if role == "owner" else args[:1]
        )
        process.start()
        theirs.close()
        self.pids.add(process.pid or 0)
        self.children[role, slot] = Child(role, slot, method, process, ours, time.monotonic(), kind)
        self.stats[f"{role}s started"] += 1

    def run(self) -> None:
        now = time.monotonic()
        end, next_kill, next_sample = now + self.args.seconds, now + self.args.kill_every, now
        while now < end:
            for role, count in (("owner", self.args.owners), ("worker", self.args.workers)):
                for slot in range(count):
                    if (role, slot) not in self.children:
                        self.start(role, slot)
            self.feed()
            self.wait(0.05)
            now = time.monotonic()
            if now >= next_kill:
                self.kill_one()
                next_kill = now + self.rng.expovariate(1 / self.args.kill_every)
            if now >= next_sample:
                self.peak = max(self.peak, sum(run_segments(self.pids).values()))
                next_sample = now + 0.25
            self.check_deadlines(now)

    def feed(self) -> None:
        # Mostly arrays of owners still running: a dead owner's stay in self.pubs
        # until newer ones push them out, which takes long while its successor starts.
        running = {child for child in self.children.values() if not child.killed}
        live = [entry for entry in self.pubs if entry[2] in running]
        for child in self.children.values():
            if child.role == "worker" and child.ready and not child.task_sent and self.pubs:
                pub, scratch, _ = self.rng.choice(
                    live if live and self.rng.random() < 0.8 else self.pubs
                )
                by_name, seed = self.rng.random() < 0.3, self.rng.randrange(1, 2**62)
                task = (pub, by_name, scratch, child.slot, seed)
                with contextlib.suppress(OSError):  # if it died, its sentinel says so
                    child.conn.send(task)
                    child.task_sent = time.monotonic()

    def wait(self, timeout: float) -> None:
        conns = {child.conn: child for child in self.children.values()}
        sentinels = {child.process.sentinel: child for child in self.children.values()}
        for ready in connection.wait([*conns, *sentinels], timeout):
            child = conns[ready] if ready in conns else sentinels[ready]  # type: ignore[index]
            if self.children.get((child.role, child.slot)) is not child:
                continue  # reaped meanwhile
            if ready in conns:
                self.receive(child)
            else:
                self.reap(child)

    def receive(self, child: Child) -> None:
        try:
            message = child.conn.recv()
        except (EOFError, OSError):  # it is dying
            self.reap(child)
            return
        if message[0] == "ready":
            child.ready = True
            if child.role == "owner":
                child.scratch = message[3]
                for what, pid in (("manager", message[1]), ("tracker", message[2])):
                    since = start_time(pid) if pid else None
                    if since is not None:
                        child.helpers[what] = (pid, since)
                        self.helpers.append((pid, since, f"{child.kind} {what} of an owner"))
                        self.pids.add(pid)
        elif message[0] == "pub":
            self.pubs.append((message[1], child.scratch, child))
            self.stats["arrays made"] += 1
        else:
            self.tally(child, message[1])

    def tally(self, child: Child, results: list[Outcome]) -> None:
        child.task_sent = 0.0
        self.stats["tasks run"] += 1
        for part, (outcome, wrong, detail) in zip(("read", "write"), results):
            self.stats[f"{part} {outcome}"] += 1
            self.wrong += wrong
            if outcome in ("wrong", "error"):
                self.errors.append(f"{part} by worker {child.process.pid}: {outcome}: {detail}")

    def reap(self, child: Child) -> None:
        child.process.join(EXIT_DEADLINE)
        del self.children[child.role, child.slot]
        child.conn.close()
        code = child.process.exitcode
        if not child.killed and code != 0:
            self.errors.append(f"{child.role} {child.process.pid} ({child.method}): exit {code}")

    def kill_one(self) -> None:
        alive = [c for c in self.children.values() if not c.killed and c.process.is_alive()]
        workers = [c for c in alive if c.role == "worker"]
        owners = [c for c in alive if c.role == "owner" and c.ready]
        pool = workers if workers and (not owners or self.rng.random() < 0.75) else owners
        if pool:
            child = self.rng.choice(pool)
            self.kill(child, tracker_too=child.role == "owner" and self.rng.random() < 0.25)
            self.stats[f"{child.role}s killed"] += 1

    def kill(self, child: Child, tracker_too: bool = False) -> None:
        """SIGKILL a child, and its stdlib manager's server, which would outlive it."""
        child.killed = True
        child.process.kill()
        if child.kind == "stdlib" and kill(child.helpers.get("manager")):
            self.stats["stdlib manager servers killed"] += 1  # CPython issue 81158
        if tracker_too and kill(child.helpers.get("tracker")):
            self.stats["owner trackers killed"] += 1

    def check_deadlines(self, now: float) -> None:
        for child in self.children.values():
            if not child.killed and not child.ready and now - child.started > START_DEADLINE:
                self.hang(child, f"not ready {START_DEADLINE:.0f} s after it was started")
            if not child.killed and child.task_sent and now - child.task_sent > TASK_DEADLINE:
                self.hang(child, f"no answer {TASK_DEADLINE:.0f} s after a task was sent")

    def hang(self, child: Child, what: str) -> None:
        with contextlib.suppress(OSError):
            os.kill(child.process.pid or 0, signal.SIGUSR1)  # its stack, to the log
        time.sleep(1)
        raise DeadlineError(f"{child.role} {child.process.pid} ({child.method}): {what}")

    def stop(self) -> None:
        for child in self.children.values():
            with contextlib.suppress(OSError):
                child.conn.send(None)
        deadline = time.monotonic() + STOP_DEADLINE
        while self.children:
            if time.monotonic() > deadline:
                raise DeadlineError(f"{len(self.children)} processes still running after stop")
            self.wait(0.1)

    def kill_all(self) -> None:
        for child in list(self.children.values()):
            self.kill(child)
            self.reap(child)

    def finish(self) -> tuple[int, int]:
        """Wait for the owners' helpers, stop the resource tracker, clean; count leftovers."""

        def running() -> list[tuple[int, str, str]]:
            return [helper for helper in self.helpers if start_time(helper[0]) == helper[1]]

        wait_until(lambda: not running(), EXIT_DEADLINE)
        for pid, since, what in running():
            self.errors.append(f"{what} (pid {pid}) still running {EXIT_DEADLINE:.0f} s later")
            kill((pid, since))
        if not stop_resource_tracker():
            self.errors.append(f"the resource tracker still running {EXIT_DEADLINE:.0f} s later")
        with open("/proc/self/maps") as maps:
            if re.search(r"/dev/shm/\.?sma_", maps.read()):
                self.errors.append("the driver maps a segment, though it never used an array")
        before = run_segments(self.pids)
        clean_segments()
        after = run_segments(self.pids)
        self.errors.extend(f"left after clean: {describe(name)}" for name in sorted(after))
        return len(before), len(after)


def stop_resource_tracker() -> bool:
    """Stop this process's resource tracker, as at exit: it unlinks what is registered."""
    tracker: Any = resource_tracker._resource_tracker
    fd, pid = tracker._fd, tracker._pid
    if fd is None or pid is None:
        return True
    tracker._fd = tracker._pid = None
    os.close(fd)
    return wait_until(lambda: os.waitpid(pid, os.WNOHANG)[0] != 0, EXIT_DEADLINE)


def run_segments(pids: set[int]) -> dict[str, int]:
    """This run's segments (and drafts) in /dev/shm, with the bytes each holds."""
    found = {}
    for name in os.listdir(SHM):
        match = RUN_SEGMENT.match(name)
        if match and int(match[1]) in pids:
            with contextlib.suppress(FileNotFoundError):
                found[name] = os.stat(os.path.join(SHM, name)).st_blocks * 512
    return found


def describe(name: str) -> str:
    """What ``clean`` knew of a segment it left, for the report."""
    try:
        return repr(segment_info(name))
    except Exception as exc:  # not recognised as a segment of this library, or gone
        return f"{name}: {exc!r}"


def stderr_blocks(text: str) -> tuple[int, list[str]]:
    """Count the trackers' warnings about a killed owner's segments; return all else."""
    blocks: list[str] = []
    for line in text.splitlines():
        if blocks and line.startswith((" ", "\t")):
            blocks[-1] += "\n" + line  # a warning's source line, a traceback's frames
        else:
            blocks.append(line)
    noise = [block for block in blocks if not TRACKER_WARNING.search(block.split("\n")[0])]
    return len(blocks) - len(noise), noise


def main() -> int:
    parser = argparse.ArgumentParser(description="Chaos soak of shared-memory-array.")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--owners", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=0.5, help="mean seconds between kills")
    args = parser.parse_args()
    log_fd, log_path = tempfile.mkstemp(prefix="chaos_soak_", suffix=".stderr")
    sys.stderr.flush()
    os.dup2(log_fd, 2)  # every child, and every resource tracker, writes here
    resource_tracker.ensure_running()  # before any child: the workers share it
    faulthandler.dump_traceback_later(args.seconds + 300, exit=True, file=sys.stdout)
    began, soak = time.monotonic(), Soak(args)
    try:
        soak.run()
        soak.stop()
    except BaseException as exc:  # a missed deadline, Ctrl-C, a bug here: still clean up
        soak.errors.append(str(exc) if isinstance(exc, DeadlineError) else traceback.format_exc())
    finally:
        soak.kill_all()
    try:
        left_for_clean, left = soak.finish()
    except Exception:
        soak.errors.append(traceback.format_exc())
        left_for_clean = left = -1
    with open(log_path) as log:
        tracker_warnings, noise = stderr_blocks(log.read())
    passed = not (soak.errors or noise or soak.wrong or left)
    for problem in soak.errors[:20] + [f"stderr: {block}" for block in noise[:20]]:
        print(f"ERROR {problem}")
    n = soak.stats
    print(
        f"chaos soak {'PASSED' if passed else 'FAILED'} (seed {args.seed}, {args.owners} owners,"
        f" {args.workers} workers, Python {sys.version.split()[0]}): {n['tasks run']} tasks run"
        f" ({n['read ok']} reads and {n['write ok']} writes verified, {n['read gone']} reads and"
        f" {n['write gone']} writes found their segment gone); {n['arrays made']} arrays made by"
        f" {n['owners started']} owners; {n['workers killed']} of {n['workers started']} workers"
        f" and {n['owners killed']} owners killed (and {n['stdlib manager servers killed']}"
        f" stdlib manager servers, {n['owner trackers killed']} owners' resource trackers); wrong"
        f" bytes read: {soak.wrong}; errors: {len(soak.errors)}; segments left for clean:"
        f" {left_for_clean}, left after clean: {left}; max /dev/shm used by this run:"
        f" {soak.peak / 2**20:.1f} MiB; resource tracker warnings (expected after SIGKILL):"
        f" {tracker_warnings}; other stderr: {len(noise)}; took {time.monotonic() - began:.1f} s."
    )
    if passed:
        os.unlink(log_path)
    else:
        print(f"children's stderr: {log_path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
