"""Host A of test_dask_hosts.py: start a cluster, check `publish` across two hosts, print JSON.

Run by the test inside host A's network namespace and private /dev/shm::

    python _dask_hosts_driver.py --host 10.231.0.1 --address-file F --workers 4

It starts a scheduler and two workers on ``--host``, writes the scheduler's address
to ``--address-file`` (the test starts host B's workers with it), waits for
``--workers`` workers, makes the checks and prints what it saw as one line of JSON
on stdout.  The test makes the assertions.  Then it waits for the workers of the
other host to leave (the test stops them while the scheduler is still there: a
scheduler that closes first makes their logs print tracebacks) and shuts down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import distributed
import numpy as np

from shared_memory_array import (
    ForeignHostError,
    ReleasedError,
    SegmentNotFoundError,
    SharedMemoryArray,
    _segment,
)
from shared_memory_array.dask import PublishedArray, host_key, publish

SHM = "/dev/shm"
SHAPE = (512, 1024)  # float64: 4 MiB
TASKS_PER_WORKER = 3


# --- tasks -------------------------------------------------------------------------


def whereabouts() -> dict[str, Any]:
    """Which host this process is on, by the library's key and by the parts it is made of."""
    with open("/proc/sys/kernel/random/boot_id") as boot:
        boot_id = boot.read().strip()
    return {
        "host": host_key(),
        "boot_id": boot_id,
        "shm_device": os.stat(SHM).st_dev,
        "pid": os.getpid(),
    }


def segments() -> dict[str, Any]:
    """This host's ``sma_*`` segments and their sizes in bytes."""
    found = {}
    for name in os.listdir(SHM):
        if name.startswith("sma_"):
            with contextlib.suppress(FileNotFoundError):  # unlinked since the listing
                found[name] = os.stat(os.path.join(SHM, name)).st_size
    return {"host": host_key(), "segments": found}


def mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process, from /proc/self/maps."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            if start <= address < end:
                return fields[5].strip() if len(fields) == 6 else ""
    return None


def refuses(write: Any) -> bool:
    """Whether ``write()`` raises the ValueError NumPy raises for read-only arrays."""
    try:
        write()
    except ValueError:
        return True
    return False


def read_rows(published: Any, start: int, stop: int) -> dict[str, Any]:
    """Sum rows ``start:stop`` of this host's copy; say how the view is made."""
    view = published.as_array()
    again = published()
    return {
        "host": host_key(),
        "total": float(view[start:stop].sum()),
        "shape": list(view.shape),
        "writeable": bool(view.flags.writeable),
        "write_refused": refuses(lambda: view.__setitem__((start, 0), view[start, 0])),
        "make_writeable_refused": refuses(lambda: view.setflags(write=True)),
        "same_memory_twice": bool(np.shares_memory(view, again)),
        "mapped_file": mapped_file(view.__array_interface__["data"][0]),
    }


def error_of(use: Any) -> str:
    """Call ``use``; return the name of the exception it raised, or ``'none'``."""
    try:
        use()
    except Exception as error:  # reported by name, the test says which one it wanted
        return type(error).__name__
    return "none"


def sum_plain(handle: SharedMemoryArray[Any]) -> float:
    return float(handle.as_array().sum())


def try_plain(handle: SharedMemoryArray[Any]) -> dict[str, Any]:
    return {"host": host_key(), "error": error_of(handle.as_array)}


def try_published(published: Any) -> dict[str, Any]:
    return {"host": host_key(), "error": error_of(published.as_array)}


def use_published(published: Any) -> float:
    return float(published.as_array().sum())


# --- the driver --------------------------------------------------------------------


def on_each(client: distributed.Client, workers: list[str], function: Any, *args: Any) -> Any:
    """Run ``function(*args)`` as a task pinned to each worker; results by worker."""
    futures = {
        address: client.submit(function, *args, workers=[address], pure=False)
        for address in workers
    }
    return {address: future.result(timeout=60) for address, future in futures.items()}


def describe(error: BaseException | None) -> dict[str, Any]:
    """How an exception came back to the client."""
    return {
        "type": type(error).__name__,
        "is_foreign_host_error": isinstance(error, ForeignHostError),
        "is_released_error": isinstance(error, ReleasedError),
        "is_segment_not_found": isinstance(error, SegmentNotFoundError),
        "is_file_not_found": isinstance(error, FileNotFoundError),
        "host": getattr(error, "host", None),
        "hosts": list(getattr(error, "hosts", ())),
        "message": str(error),
    }


def holders(published: PublishedArray) -> dict[str, list[int]]:
    """The processes holding each host's copy open or mapped (one PID namespace for both)."""
    mappers = _segment.holders()
    return {host: mappers.get(name, []) for host, name in published.hosts.items()}


def check(client: distributed.Client, early: PublishedArray) -> dict[str, Any]:
    result: dict[str, Any] = {"driver": whereabouts()}
    workers = sorted(client.nthreads())
    result["workers"] = on_each(client, workers, whereabouts)

    # ``early`` was published before host B's workers started: their first use
    # makes host B's copy, from host A's.
    result["early_hosts"] = early.hosts
    result["early_expected"] = float(early.as_array().sum())
    result["early_reads"] = on_each(client, workers, read_rows, early, 0, SHAPE[0])
    result["early_segments"] = on_each(client, workers, segments)
    early.release()
    result["early_released"] = on_each(client, workers, segments)
    made = {name for listed in result["early_segments"].values() for name in listed["segments"]}
    mappers = _segment.holders()
    result["early_holders_released"] = {name: mappers.get(name, []) for name in sorted(made)}
    here = host_key()
    elsewhere = [address for address in workers if result["workers"][address]["host"] != here]
    at_home = [address for address in workers if address not in elsewhere]

    array = np.arange(float(np.prod(SHAPE))).reshape(SHAPE)
    result["nbytes"] = array.nbytes
    result["shape"] = list(array.shape)
    published = publish(client, array)
    result["published_hosts"] = published.hosts
    result["segments_published"] = on_each(client, workers, segments)

    bounds = np.linspace(0, SHAPE[0], TASKS_PER_WORKER + 1).astype(int).tolist()
    reads = []
    for address in workers:
        for start, stop in zip(bounds, bounds[1:]):
            future = client.submit(read_rows, published, start, stop, workers=[address], pure=False)
            reads.append((address, start, stop, future))
    result["reads"] = [
        {
            "worker": address,
            "expected": float(array[start:stop].sum()),
            **future.result(timeout=60),
        }
        for address, start, stop, future in reads
    ]

    result["holders_published"] = holders(published)

    small = np.arange(10.0)
    with SharedMemoryArray.copy(None, small) as plain:
        result["plain_expected"] = float(small.sum())
        result["plain_at_home"] = on_each(client, at_home, sum_plain, plain)
        result["plain_elsewhere"] = on_each(client, elsewhere, try_plain, plain)
        future = client.submit(sum_plain, plain, workers=elsewhere[:1], pure=False)
        result["plain_elsewhere_raised"] = describe(future.exception(timeout=60))

    published.release()
    result["segments_released"] = on_each(client, workers, segments)
    result["holders_released"] = holders(published)
    result["released_reads"] = on_each(client, workers, try_published, published)
    future = client.submit(use_published, published, workers=workers[:1], pure=False)
    result["released_raised"] = describe(future.exception(timeout=60))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="address to run the scheduler on")
    parser.add_argument("--address-file", required=True, help="where to write its address")
    parser.add_argument("--workers", type=int, required=True, help="workers to wait for")
    args = parser.parse_args()

    with (
        distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            host=args.host,
            scheduler_port=0,
            dashboard_address=":0",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=60)  # host A's
        early = publish(client, np.arange(float(np.prod(SHAPE))).reshape(SHAPE))
        partial = Path(args.address_file + ".partial")
        partial.write_text(cluster.scheduler_address)
        partial.replace(args.address_file)  # the reader sees all of it or nothing
        client.wait_for_workers(args.workers, timeout=60)
        print(json.dumps(check(client, early)), flush=True)
        mine = set(cluster.workers)
        deadline = time.monotonic() + 60
        while len(client.nthreads()) > len(mine) and time.monotonic() < deadline:
            time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
