"""A fork() at any moment leaves the child able to make arrays: the resource tracker's lock.

Each script runs in a fresh interpreter, whose resource tracker has not started yet
(this process's has), forks while the tracker's lock is held, and exits 0 only if
the child allocated and closed an array before a deadline.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no fork() on Windows")

# The parent waits for its forked child by polling, and kills it at the deadline.
PRELUDE = """
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from multiprocessing import resource_tracker, util

from shared_memory_array import SharedMemoryArray

# 3.12+ warns on fork() from a process with threads; forking with threads is the point.
warnings.filterwarnings("ignore", r"This process .* is multi-threaded", DeprecationWarning)
DEADLINE = 20.0


def make_an_array():
    with SharedMemoryArray.allocate(None, 4) as shared:
        shared.as_array()[:] = 1


def in_child_make_an_array(unlock=None):
    code = 1
    try:
        if unlock is not None:
            unlock()
        make_an_array()
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def wait_for(pid):
    deadline = time.monotonic() + DEADLINE
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            sys.exit("the forked child could not make an array: deadlocked")
        time.sleep(0.01)
"""

# Another thread makes the process's first array, and is in the middle of starting
# the tracker (holding its lock) when the main thread forks.
FORK_WHILE_THE_TRACKER_STARTS = """
starting, finish = threading.Event(), threading.Event()
spawnv_passfds = util.spawnv_passfds


def paused_spawnv_passfds(*args):
    starting.set()
    finish.wait()
    return spawnv_passfds(*args)


util.spawnv_passfds = paused_spawnv_passfds
maker = threading.Thread(target=make_an_array)
maker.start()
if not starting.wait(DEADLINE):
    sys.exit("the first array never started the resource tracker")
threading.Timer(0.2, finish.set).start()
pid = os.fork()
if pid == 0:
    in_child_make_an_array()
maker.join()
sys.exit(wait_for(pid))
"""

# The forking thread itself holds the lock (as ensure_running would, were fork()
# called from a signal handler or finalizer it ran): fork() must not wait for it.
FORK_WHILE_THIS_THREAD_HOLDS_THE_LOCK = """
lock = resource_tracker._resource_tracker._lock
lock.acquire()
pid = os.fork()
if pid == 0:
    in_child_make_an_array(unlock=lock.release)
lock.release()
make_an_array()
sys.exit(wait_for(pid))
"""


def run_script(body: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    "body",
    [FORK_WHILE_THE_TRACKER_STARTS, FORK_WHILE_THIS_THREAD_HOLDS_THE_LOCK],
    ids=["another-thread-starts-the-tracker", "this-thread-holds-the-lock"],
)
def test_a_child_forked_while_the_tracker_lock_is_held_can_make_arrays(body: str) -> None:
    result = run_script(body)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
