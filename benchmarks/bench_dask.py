"""Section f, Dask: ``publish()`` against ``client.scatter(a, broadcast=True)``.

The ``dask_*`` functions run in the Dask workers (as tasks or through ``client.run``).
Needs ``dask[distributed]``; without it the section says so and measures nothing.
Method: README.md, "f. Dask".
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import time
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from .config import Config
from .harness import COLUMNS, MB, MIB, median, pss_bytes, rows_for, shm_used, timed
from .peers import NOT_INSTALLED, Peers, dist_version
from .report import (
    TIMES,
    Report,
    Section,
    fmt_range,
    fmt_ratio,
    fmt_time,
    markdown_table,
    method_link,
)

TITLE = "f. Dask: publish() against scatter(broadcast=True)"
PUBLISH = "**ours**: publish(client, a)"
SCATTER = "scatter(a, broadcast=True)"
SCATTER_UNHASHED = "scatter(a, broadcast=True, hash=False)"
WAIT = 60.0  # seconds to wait for a released scattered array to leave every worker

PssSample = tuple[int, int, int, int]  # workers' added, client's added, /dev/shm growth, idle
TimeSample = tuple[float, float, float]  # hand-off, first round, second round

# --------------------------------------------------------------------------- in the workers


def dask_sum(data: Any, keep: bool) -> tuple[float, int]:
    """Dask task: sum the whole array (scattered, or a PublishedArray's view); maybe keep it.

    A kept array stays referenced by the worker until `dask_drop_kept`.
    """
    from distributed import get_worker

    array = data.as_array() if hasattr(data, "as_array") else data
    if keep:
        worker = get_worker()
        worker._smabench_kept = [*getattr(worker, "_smabench_kept", []), array]
    return float(array.sum()), os.getpid()


def dask_drop_kept(dask_worker: Any) -> None:
    """``client.run`` function: drop what `dask_sum` kept, then collect garbage."""
    dask_worker.__dict__.pop("_smabench_kept", None)
    gc.collect()


def dask_holds(key: Any, dask_worker: Any) -> bool:
    """``client.run`` function: whether this worker still stores ``key``."""
    return key in dask_worker.data


# --------------------------------------------------------------------------- in the client


@contextlib.contextmanager
def dask_cluster(distributed: ModuleType, workers: int) -> Iterator[Any]:
    """A fresh ``LocalCluster`` of single-threaded worker processes, and its client."""
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(
            distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            )
        )
        client = stack.enter_context(distributed.Client(cluster))
        client.wait_for_workers(workers)
        yield client


def _hand_off(client: Any, smd: ModuleType, how: str, data: np.ndarray[Any, Any]) -> Any:
    if how == PUBLISH:
        return smd.publish(client, data)
    return client.scatter(data, broadcast=True, hash=how != SCATTER_UNHASHED)


def _round(client: Any, handed: Any, addresses: Sequence[str], expected: float, keep: bool) -> None:
    """One task per worker, pinned to it, each summing the whole array; checks the sums."""
    futures = [
        client.submit(
            dask_sum, handed, keep, workers=[address], allow_other_workers=False, pure=False
        )
        for address in addresses
    ]
    answers = client.gather(futures)
    if any(total != expected for total, _pid in answers):
        raise AssertionError(f"a Dask task summed {answers}, not {expected}")
    if len({pid for _total, pid in answers}) != len(addresses):
        raise AssertionError(f"the tasks did not run one per worker process: {answers}")


def _release(client: Any, how: str, handed: Any) -> None:
    """Free a hand-off and wait until every worker has let go of it."""
    if how == PUBLISH:
        handed.release()
    else:
        key = handed.key
        handed.release()
        deadline = time.monotonic() + WAIT
        while any(client.run(dask_holds, key).values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers still hold the released {key!r}")
            time.sleep(0.05)
    client.run(gc.collect)


def _warm_up(client: Any, smd: ModuleType, addresses: Sequence[str]) -> None:
    """Run both hand-offs once on a small array: imports, plugin registration, pickling."""
    small = np.arange(1000.0)
    for how in (PUBLISH, SCATTER):
        handed = _hand_off(client, smd, how, small)
        _round(client, handed, addresses, float(small.sum()), keep=False)
        _release(client, how, handed)


def _pss(
    distributed: ModuleType,
    smd: ModuleType,
    how: str,
    data: np.ndarray[Any, Any],
    expected: float,
    workers: int,
) -> PssSample:
    """One measurement in a fresh cluster; all in bytes.

    Returns the PSS the hand-off and one task per worker (each summing the whole
    array and keeping it) added to the workers together and to this process (the
    client, which also runs the scheduler), the growth of /dev/shm, and the PSS
    of the idle workers before the hand-off.
    """
    with dask_cluster(distributed, workers) as client:
        pids: dict[str, int] = client.run(os.getpid)
        addresses = sorted(pids)
        _warm_up(client, smd, addresses)
        gc.collect()
        idle = sum(pss_bytes(pids[address]) for address in addresses)
        client_before, shm_before = pss_bytes(os.getpid()), shm_used()
        handed = _hand_off(client, smd, how, data)
        try:
            if how != PUBLISH:
                holders = client.who_has([handed])[handed.key]
                if len(holders) != workers:
                    raise AssertionError(f"scatter(broadcast=True) reached {holders} only")
            _round(client, handed, addresses, expected, keep=True)
            client.run(gc.collect)
            gc.collect()
            added = sum(pss_bytes(pids[address]) for address in addresses) - idle
            client_added = pss_bytes(os.getpid()) - client_before
            shm_added = shm_used() - shm_before
        finally:
            client.run(dask_drop_kept)
            _release(client, how, handed)
    return added, client_added, shm_added, idle


def _times(
    distributed: ModuleType, smd: ModuleType, config: Config, data: np.ndarray[Any, Any]
) -> dict[str, list[TimeSample]]:
    """Per hand-off, (hand-off, first round, second round) seconds of each repetition.

    One cluster for all; the hand-offs alternate their order repetition by repetition,
    and each is freed (and gone from every worker) before the next starts.
    """
    hows = [PUBLISH, SCATTER, SCATTER_UNHASHED]
    samples: dict[str, list[TimeSample]] = {how: [] for how in hows}
    with dask_cluster(distributed, config.dask_workers) as client:
        addresses = sorted(client.run(os.getpid))
        _warm_up(client, smd, addresses)
        for rep in range(config.dask_time_reps + 1):  # repetition 0: untimed warm-up
            data[0, 0] = float(rep)  # a new token each time: hashed scatters never reuse a key
            expected = float(data.sum())
            for how in hows if rep % 2 else hows[::-1]:
                gc.collect()
                start = time.perf_counter()
                handed = _hand_off(client, smd, how, data)
                handed_at = time.perf_counter()
                try:
                    _round(client, handed, addresses, expected, keep=False)
                    first_at = time.perf_counter()
                    _round(client, handed, addresses, expected, keep=False)
                    second_at = time.perf_counter()
                finally:
                    _release(client, how, handed)
                    del handed
                if rep:
                    samples[how].append(
                        (handed_at - start, first_at - handed_at, second_at - first_at)
                    )
            print(f"[f] timing repetition {rep}/{config.dask_time_reps} done", flush=True)
    return samples


def _column(samples: Sequence[tuple[float, ...]], index: int) -> list[float]:
    return [float(sample[index]) for sample in samples]


def _pss_table(pss: dict[str, list[PssSample]], nbytes: int) -> list[str]:
    rows = []
    for how, samples in pss.items():
        added, client_added, shm_added = (_column(samples, index) for index in range(3))
        both = [worker + client for worker, client in zip(added, client_added)]
        rows.append(
            [
                how,
                fmt_range(added, "", 1 / MIB),
                fmt_ratio(median(added) / nbytes),
                fmt_range(client_added, "", 1 / MIB),
                fmt_ratio(median(both) / nbytes),
                fmt_range(shm_added, "", 1 / MIB),
            ]
        )
    headers = [
        "hand-off",
        "workers' PSS added, MiB",
        f"{TIMES} array",
        "client's PSS added, MiB",
        f"workers + client, {TIMES} array",
        "/dev/shm growth, MiB",
    ]
    return markdown_table(headers, rows)


def _time_table(times: dict[str, list[TimeSample]]) -> list[str]:
    scatter_handoff = median(_column(times[SCATTER], 0))
    scatter_total = median([sample[0] + sample[1] for sample in times[SCATTER]])
    rows = []
    for how, samples in times.items():
        handoff = _column(samples, 0)
        total = [sample[0] + sample[1] for sample in samples]
        rows.append(
            [
                how,
                fmt_time(handoff),
                fmt_ratio(median(handoff) / scatter_handoff),
                fmt_time(_column(samples, 1)),
                fmt_time(_column(samples, 2)),
                fmt_time(total),
                fmt_ratio(median(total) / scatter_total),
            ]
        )
    headers = [
        "hand-off",
        "hand-off time",
        f"{TIMES} scatter",
        "first round of tasks",
        "second round",
        "hand-off + first round",
        f"{TIMES} scatter",
    ]
    return markdown_table(headers, rows)


# --------------------------------------------------------------------------- the section


def run(config: Config, peers: Peers, ctx: Any, report: Report) -> None:
    """Section f: publish() against scatter(broadcast=True) on a Dask LocalCluster."""
    try:
        distributed = importlib.import_module("distributed")
        smd = importlib.import_module("shared_memory_array.dask")
    except ImportError as exc:
        report.add(Section(TITLE, [f"Not run: Dask distributed is {NOT_INSTALLED} ({exc})."]))
        return
    workers = config.dask_workers
    rows = rows_for(config.dask_mb)
    # random whole numbers: incompressible, and summed exactly in any order or alignment
    data = np.random.default_rng(0).integers(0, 1 << 20, (rows, COLUMNS)).astype(np.float64)
    nbytes = data.nbytes
    expected = float(data.sum())
    pss: dict[str, list[PssSample]] = {PUBLISH: [], SCATTER: []}
    for rep in range(config.dask_pss_reps):
        for how in list(pss) if rep % 2 == 0 else list(pss)[::-1]:
            pss[how].append(_pss(distributed, smd, how, data, expected, workers))
        print(f"[f] PSS repetition {rep + 1}/{config.dask_pss_reps} done", flush=True)
    times = _times(distributed, smd, config, data)
    tokenize = importlib.import_module("dask.base").tokenize
    hashing = [timed(lambda: tokenize(data))[0] for _ in range(3)]

    publish_added = median(_column(pss[PUBLISH], 0))
    scatter_added = median(_column(pss[SCATTER], 0))
    report.figures["dask_pss"] = publish_added / nbytes
    report.figures["dask_pss_scatter"] = scatter_added / nbytes
    idle = _column(pss[PUBLISH] + pss[SCATTER], 3)
    versions = ", ".join(f"{name} {dist_version(name)}" for name in ("dask", "distributed"))
    method = importlib.import_module("dask").config.get("distributed.worker.multiprocessing-method")
    section = Section(
        TITLE,
        [
            f"A `LocalCluster` of {workers} single-threaded worker processes (started with "
            f"{method}; {versions}) gets a {nbytes / MB:.0f} MB ({nbytes / MIB:.0f} MiB) "
            f"float64 array ({rows:,} {TIMES} {COLUMNS:,}) by `client.scatter(a, "
            "broadcast=True)` or by `publish(client, a)`, then one task per worker sums it. "
            f"Memory: {config.dask_pss_reps} repetition(s), a fresh cluster each; time: "
            f"{config.dask_time_reps} repetitions in one cluster. " + method_link("f-dask")
        ],
    )
    section.tables.append(_pss_table(pss, nbytes))
    section.tables.append(_time_table(times))
    section.notes.append(
        f"Idle workers before the hand-off: {fmt_range(idle, 'MiB', 1 / MIB)} of PSS "
        f"together (the baseline subtracted above). publish() adds "
        f"{publish_added / scatter_added:.2f} of what scatter(broadcast=True) adds to "
        "the workers."
    )
    section.notes.append(
        f"Hashing: `dask.base.tokenize(a)`, which scatter's default `hash=True` runs, "
        f"takes {fmt_time(hashing)} here (3 runs)."
    )
    report.add(section)
