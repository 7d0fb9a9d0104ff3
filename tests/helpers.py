"""Functions the tests run in other processes (importable by name, for spawn and forkserver)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import textwrap
from multiprocessing import resource_tracker
from typing import Any

import numpy as np

from shared_memory_array import SharedMemoryArray

# Dask's log format: "2026-01-02 03:04:05,678 - distributed.worker - INFO - message"
LOG_RECORD_START = re.compile(r"(?m)^(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - )")
LOG_RECORD = re.compile(r"\S+ \S+ - (?P<logger>\S+) - (?P<level>[A-Z]+) - (?P<message>.*)")


def raw_name() -> str:
    """A name for a segment a test makes without this library (the leak check knows it)."""
    return f"test_{os.getpid()}_{secrets.token_hex(4)}"


def total(handle: SharedMemoryArray[Any]) -> float:
    return float(handle.as_array().sum())


def row_sum(args: tuple[SharedMemoryArray[Any], int]) -> float:
    handle, row = args
    return float(handle.as_array()[row].sum())


def write(handle: SharedMemoryArray[Any], index: int, value: float) -> None:
    handle.as_array().flat[index] = value
    handle.close()


def tracker_messages(handle: SharedMemoryArray[Any]) -> list[tuple[str, str]]:
    """Use ``handle`` (unpickled here), attach again; return what reached the resource tracker."""
    sent: list[tuple[str, str]] = []
    tracker = resource_tracker._resource_tracker  # type: ignore[attr-defined]
    original = tracker._send

    def spy(cmd: str, name: str, rtype: str) -> None:
        sent.append((cmd, name))
        original(cmd, name, rtype)

    tracker._send = spy
    try:
        handle.as_array()[0] += 1
        again = SharedMemoryArray.attach(handle.name)
        again.as_array()[0] += 1
        again.close()
        handle.close()
    finally:
        del tracker._send
    return sent


def owner_facts(handle: SharedMemoryArray[Any]) -> tuple[bool, bool]:
    """In a child: (is the unpickled handle an owner, does unlink refuse)."""
    try:
        handle.unlink()
    except PermissionError:
        refused = True
    else:
        refused = False
    owner = handle.owner
    handle.close()
    return owner, refused


def sum_in_place(array: np.ndarray[Any, Any]) -> float:
    return float(array.sum())


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a separately started interpreter, capturing its output."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def with_private_dev_shm(options: str, *command: str) -> list[str]:
    """``command`` run in a mount namespace of its own with a new tmpfs on /dev/shm
    (``options`` as for ``mount -o``, e.g. ``size=16m``); needs root and ``unshare``."""
    mount = f'mount -t tmpfs -o {options} tmpfs /dev/shm && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh", *command]


def log_records(stderr: str) -> list[str]:
    """Split what a Dask process printed into its log records (with their tracebacks)."""
    return [chunk for chunk in LOG_RECORD_START.split(stderr) if chunk.strip()]


def is_dask_heartbeat_race(record: str) -> bool:
    """Whether ``record`` is the error Dask's own worker shutdown sometimes logs.

    A worker closing its connections while its heartbeat to the scheduler is in
    flight logs "Failed to communicate with scheduler during heartbeat" with a
    CommClosedError (dask/distributed#7105).  It comes from Dask, with or without
    this library: here 2 runs in 25 of a LocalCluster doing only scatter logged it.
    """
    lines = record.strip().splitlines()
    found = LOG_RECORD.match(lines[0])
    return (
        found is not None
        and found["logger"] == "distributed.worker"
        and found["message"] == "Failed to communicate with scheduler during heartbeat."
        and lines[-1].startswith("distributed.comm.core.CommClosedError: ")
    )


def without_dask_heartbeat_races(stderr: str) -> str:
    """``stderr`` without the log records `is_dask_heartbeat_race` tells apart."""
    return "".join(record for record in log_records(stderr) if not is_dask_heartbeat_race(record))
