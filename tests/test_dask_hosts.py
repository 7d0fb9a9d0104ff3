"""A Dask cluster spread over two hosts keeps one copy of a published array on each.

Two hosts are simulated on this machine: two network namespaces joined by a veth
pair (10.231.0.1 and 10.231.0.2), and for each host a private mount namespace with
its own tmpfs on /dev/shm, so the hosts share the kernel (same boot id) but not
shared memory (different device numbers).  Host A runs the scheduler, two workers
and the driver (`_dask_hosts_driver.py`), which makes the checks and prints them
as JSON; host B runs two more workers.  The test needs root; it skips where
namespaces, veth links or mounts are not allowed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    LOG_RECORD,
    is_dask_heartbeat_race,
    log_records,
    without_dask_heartbeat_races,
)

HOST_A = "10.231.0.1"
HOST_B = "10.231.0.2"
DRIVER = Path(__file__).with_name("_dask_hosts_driver.py")
# Run "$0" "$@" with a tmpfs of its own on /dev/shm (the caller unshares the mounts).
WITH_OWN_SHM = 'mount -t tmpfs -o size=256m tmpfs /dev/shm && exec "$0" "$@"'

pytest.importorskip("distributed", reason="distributed is an optional test dependency")


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)


def on_host(namespace: str, *command: str) -> list[str]:
    """The command line that runs ``command`` on a host: its netns and its own /dev/shm."""
    return [
        "ip",
        "netns",
        "exec",
        namespace,
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        WITH_OWN_SHM,
        *command,
    ]


@pytest.fixture
def hosts() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair; deleted afterwards, whatever happened."""
    if not sys.platform.startswith("linux"):
        pytest.skip("network and mount namespaces are Linux only")
    if os.geteuid() != 0:
        pytest.skip("making network namespaces needs root")
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    names = (f"sma-test-{os.getpid()}-a", f"sma-test-{os.getpid()}-b")
    made = []
    try:
        for name in names:
            added = ip("netns", "add", name)
            if added.returncode != 0:
                pytest.skip(f"cannot make a network namespace: {added.stderr.strip()}")
            made.append(name)
        link = ip(
            "link", "add", "eth-a", "netns", names[0],
            "type", "veth", "peer", "name", "eth-b", "netns", names[1],
        )  # fmt: skip
        if link.returncode != 0:
            pytest.skip(f"cannot make a veth pair: {link.stderr.strip()}")
        for name, device, address in ((names[0], "eth-a", HOST_A), (names[1], "eth-b", HOST_B)):
            for command in (
                ("link", "set", "lo", "up"),
                ("addr", "add", f"{address}/24", "dev", device),
                ("link", "set", device, "up"),
            ):
                done = ip("-n", name, *command)
                assert done.returncode == 0, done.stderr
        probe = subprocess.run(
            on_host(names[0], "stat", "-c", "%d", "/dev/shm"),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.returncode != 0 or probe.stdout.strip() == str(os.stat("/dev/shm").st_dev):
            pytest.skip(f"cannot mount a private /dev/shm here: {probe.stderr.strip()}")
        yield names
    finally:
        for name in made:
            stop_everything_in(name)
            ip("netns", "delete", name)


def stop_everything_in(namespace: str) -> None:
    """Kill the processes left in ``namespace``: this test started every one of them."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = [int(pid) for pid in ip("netns", "pids", namespace).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


@contextlib.contextmanager
def started(
    command: list[str], log: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in a process group of its own; kill the group if it is still there.

    ``ip netns exec``, ``unshare`` and ``sh -c 'exec ...'`` each exec the next, so the
    process is the Python program itself, and the processes it starts share its group.
    """
    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.returncode is None:  # not reaped: the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def wait_for_exit(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        return process.wait(timeout)
    return None


def run_cluster(namespaces: tuple[str, str], folder: Path) -> dict[str, Any]:
    """Run the driver on host A and two workers on host B; return what the driver saw.

    Also returns the exit codes of both, and what they printed on stderr until the
    driver's checks were done, under ``"exit"`` and ``"stderr"``.
    """
    namespace_a, namespace_b = namespaces
    address_file = folder / "scheduler"
    env = {**os.environ, "DASK_TEMPORARY_DIRECTORY": str(folder)}
    driver_command = on_host(
        namespace_a, sys.executable, str(DRIVER),
        "--host", HOST_A, "--address-file", str(address_file), "--workers", "4",
    )  # fmt: skip
    with started(driver_command, folder / "a", env) as driver:
        deadline = time.monotonic() + 60
        while not address_file.exists():
            assert driver.poll() is None, f"the driver failed: {text_of(folder / 'a.err')}"
            assert time.monotonic() < deadline, "the scheduler did not start in 60 s"
            time.sleep(0.05)
        workers_command = on_host(
            namespace_b, sys.executable, "-m", "distributed.cli.dask_worker",
            address_file.read_text(), "--host", HOST_B,
            "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
        )  # fmt: skip
        with started(workers_command, folder / "b", env) as workers_b:
            deadline = time.monotonic() + 90
            while not text_of(folder / "a.out").endswith("\n"):
                assert driver.poll() is None, f"the driver failed: {text_of(folder / 'a.err')}"
                assert workers_b.poll() is None, f"host B failed: {text_of(folder / 'b.err')}"
                assert time.monotonic() < deadline, "the driver did not finish in 90 s"
                time.sleep(0.05)
            # What the processes printed while in use: Dask's own shutdown may log
            # connection errors (workers and the scheduler closing at once).
            in_use = {"a": text_of(folder / "a.err"), "b": text_of(folder / "b.err")}
            # Stop host B while the scheduler still runs: the driver waits for that.
            workers_b.send_signal(signal.SIGTERM)
            exit_b = wait_for_exit(workers_b, 30)
        exit_a = wait_for_exit(driver, 30)
    result: dict[str, Any] = json.loads(text_of(folder / "a.out"))
    result["exit"] = {"a": exit_a, "b": exit_b}
    result["stderr"] = in_use
    return result


def text_of(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def complaints(stderr: str) -> list[str]:
    """What a process printed besides its INFO logs and the task failures the driver caused."""
    return [record for record in log_records(stderr) if not harmless(record)]


def harmless(chunk: str) -> bool:
    record = LOG_RECORD.match(chunk)
    if record is None:  # not a log record: a warning or a traceback printed as is
        return False
    if is_dask_heartbeat_race(chunk):
        return True
    if record["level"] in ("DEBUG", "INFO"):
        return chunk.count("\n") <= 1  # no warning printed as is after it
    # The tasks the driver lets fail, to see their exceptions reach the client.
    return record["message"].startswith("Compute Failed") and (
        "ForeignHostError(" in chunk or "ReleasedError(" in chunk
    )


def check_a_host_added_after_publish_made_its_copy_at_first_use(
    result: dict[str, Any], here: str
) -> None:
    """``early`` was published before host B's workers started; they used it."""
    workers = result["workers"]
    (early_name,) = result["early_hosts"].values()
    assert list(result["early_hosts"]) == [here]
    late_names = set()
    for address, task in result["early_reads"].items():
        assert task["host"] == workers[address]["host"]
        assert task["total"] == result["early_expected"]
        assert task["write_refused"] and not task["writeable"]
        ((name, size),) = result["early_segments"][address]["segments"].items()
        assert task["mapped_file"] == f"/dev/shm/{name}"
        assert result["nbytes"] < size <= result["nbytes"] + 65536
        if task["host"] == here:
            assert name == early_name
        else:
            late_names.add(name)
    assert len(late_names) == 1 and late_names.pop().startswith("sma_late_")
    for listed in result["early_released"].values():
        assert listed["segments"] == {}
    assert len(result["early_holders_released"]) == 2
    assert all(held_by == [] for held_by in result["early_holders_released"].values())


@pytest.mark.timeout(180)
def test_two_hosts_each_hold_one_copy_and_refuse_foreign_handles(hosts, tmp_path):
    result = run_cluster(hosts, tmp_path)
    assert result["exit"] == {"a": 0, "b": 0}, result["stderr"]
    for stderr in result["stderr"].values():
        assert "Traceback (most recent call last)" not in without_dask_heartbeat_races(stderr)
        assert complaints(stderr) == []

    # Two hosts of two workers each: one kernel, two /dev/shm.
    workers = result["workers"]
    here = result["driver"]["host"]
    assert sorted(Counter(seen["host"] for seen in workers.values()).values()) == [2, 2]
    for address, seen in workers.items():
        assert address.startswith(f"tcp://{HOST_A}:") == (seen["host"] == here)
        assert seen["host"].startswith(f"{seen['boot_id'].replace('-', '')[:16]}:")
    assert len({seen["boot_id"] for seen in workers.values()}) == 1
    assert len({seen["shm_device"] for seen in workers.values()}) == 2
    (there,) = {seen["host"] for seen in workers.values()} - {here}

    check_a_host_added_after_publish_made_its_copy_at_first_use(result, here)

    # One copy per host, of the array's size (plus its header page).
    copies = result["published_hosts"]
    assert sorted(copies) == sorted([here, there])
    for address, listed in result["segments_published"].items():
        assert listed["host"] == workers[address]["host"]
        ((name, size),) = listed["segments"].items()
        assert name == copies[listed["host"]]
        assert result["nbytes"] < size <= result["nbytes"] + 65536
    # Held by each host's two workers and the process running its nannies (on host A
    # also the driver: LocalCluster runs its nannies in the client's process).
    pids = {seen["pid"] for seen in workers.values()}
    for host, held_by in result["holders_published"].items():
        assert len(held_by) == 3, (host, held_by)
        assert len(set(held_by) & pids) == 2

    # Every worker reads its own host's copy: right sums, zero-copy, read-only.
    reads = result["reads"]  # three tasks pinned to each worker
    assert sorted(Counter(task["worker"] for task in reads).values()) == [3, 3, 3, 3]
    for task in reads:
        assert task["host"] == workers[task["worker"]]["host"]
        assert task["total"] == task["expected"]
        assert task["shape"] == result["shape"]
        assert task["mapped_file"] == f"/dev/shm/{copies[task['host']]}"
        assert task["same_memory_twice"]
        assert not task["writeable"]
        assert task["write_refused"]
        assert task["make_writeable_refused"]

    # A plain handle made on host A works there and is refused on host B.
    assert sorted(result["plain_at_home"].values()) == [result["plain_expected"]] * 2
    assert sorted(tried["host"] for tried in result["plain_elsewhere"].values()) == [there] * 2
    assert [tried["error"] for tried in result["plain_elsewhere"].values()] == [
        "ForeignHostError"
    ] * 2
    raised = result["plain_elsewhere_raised"]  # pickled back to the client
    assert raised["type"] == "ForeignHostError"
    assert raised["is_foreign_host_error"]
    assert raised["is_segment_not_found"] and raised["is_file_not_found"]
    assert raised["host"] == there
    assert raised["hosts"] == [here]

    # release() frees the copy on both hosts; later uses raise ReleasedError.
    for listed in result["segments_released"].values():
        assert listed["segments"] == {}
    assert result["holders_released"] == {here: [], there: []}  # no descriptor kept open
    assert sorted(tried["host"] for tried in result["released_reads"].values()) == sorted(
        [here, here, there, there]
    )
    for tried in result["released_reads"].values():
        assert tried["error"] == "ReleasedError"
    raised = result["released_raised"]
    assert raised["type"] == "ReleasedError"
    assert raised["is_released_error"]
    assert raised["is_segment_not_found"] and raised["is_file_not_found"]
