"""The library's targets: the Targets table at the top of RESULTS.md.

Each target names the figure a section put in `Report.figures`, its limit, and the
letter of that section (``--merge`` replaces a target's row with its section's run).
The order of this list is the order of the table's rows.
"""

from __future__ import annotations

from .config import Config
from .report import MICRO, Target, fmt_ratio


def _spelled(count: int) -> str:
    """A small count in words, as labels read: 4 is "four"."""
    words = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    return words[count] if 0 <= count < len(words) else f"{count:,}"


def build_targets(figures: dict[str, float], config: Config) -> list[Target]:
    """The library's targets, with this run's ratios."""
    size = int(figures.get("copy_size_mb", config.share_sizes_mb[-1]))
    return [
        Target(
            "hand-off, chunksize=1: ours / passing nothing",
            figures.get("handoff_1"),
            1.15,
            True,
            f"median {MICRO}s per task, section b",
            "b",
        ),
        Target(
            "hand-off, default chunksize: ours / passing nothing",
            figures.get("handoff_default"),
            4.0,
            True,
            f"median {MICRO}s per task, section b",
            "b",
        ),
        Target(
            "cold attach: ours / raw floor",
            figures.get("cold_attach"),
            2.0,
            True,
            "attach(name).as_array() with the cache released, section c (2 this round; "
            "the goal beyond it is 1.3)",
            "c",
        ),
        Target(
            "hand-off, chunksize=1, memfd segment: ours / passing nothing",
            figures.get("handoff_memfd"),
            1.2,
            True,
            f"median {MICRO}s per task, section b",
            "b",
        ),
        Target(
            "cold attach: memfd segment / named segment",
            figures.get("memfd_cold_attach"),
            1.5,
            True,
            "attach(name).as_array() with the cache released, section c",
            "c",
        ),
        Target(
            f"copy() of {size} MB: ours / stdlib create+copy",
            figures.get("copy_vs_stdlib"),
            0.5,
            True,
            "median time, section a",
            "a",
        ),
        Target(
            f"copy() of {size} MB: ours / fastest peer",
            figures.get("copy_vs_fastest_peer"),
            1.0,
            True,
            "below 1 = faster than every installed peer, section a",
            "a",
        ),
        Target(
            f"PSS, {config.memory_workers} workers reading the array: / array size",
            figures.get("pss"),
            1.02,
            True,
            "array-attributable PSS (total minus idle baseline), section d; total "
            f"PSS / array: {fmt_ratio(figures.get('pss_total'))}",
            "d",
        ),
        Target(
            "two-worker row sum: speedup / bandwidth ideal",
            figures.get("rowsum"),
            0.9,
            False,
            "section e",
            "e",
        ),
        Target(
            f"Dask, {config.dask_workers} workers reading the array: PSS added by "
            "publish() / array size",
            figures.get("dask_pss"),
            1.1,
            True,
            "summed over the worker processes, section f; scatter(broadcast=True) adds "
            f"{fmt_ratio(figures.get('dask_pss_scatter'))}",
            "f",
        ),
        Target(
            f"drop-in, same {config.dropin_mb} MB array to {config.dropin_tasks:,} tasks, "
            "chunksize=1: ours / given nothing",
            figures.get("dropin_map"),
            1.5,
            True,
            f"ProcessPoolExecutor(2).map, median {MICRO}s per task, the same executor given "
            "ints, section g",
            "g",
        ),
        Target(
            "drop-in Pool.map default chunksize: ours / given nothing",
            figures.get("dropin_pool_default"),
            1.2,
            True,
            f"median {MICRO}s per task, the same pool given ints, the one copy into shared "
            "memory included, section g",
            "g",
        ),
        Target(
            f"drop-in results, {_spelled(config.dropin_results)} {config.dropin_result_mb} MB "
            "arrays returned: ours / stdlib executor wall time",
            figures.get("dropin_results"),
            0.25,
            True,
            "ProcessPoolExecutor(2).map until every result is in, median, section g",
            "g",
        ),
        Target(
            "drop-in results: parent peak RSS growth / results' size",
            figures.get("dropin_results_rss"),
            1.1,
            True,
            "every result read and held, in a fresh process, section g; the stdlib executor: "
            f"{fmt_ratio(figures.get('dropin_results_rss_stdlib'))}",
            "g",
        ),
        Target(
            f"drop-in, {config.dropin_memory_workers} workers reading the same "
            f"{config.dropin_memory_mb} MB array: worker PSS attributable to it / array size",
            figures.get("dropin_pss"),
            1.05,
            True,
            "PSS added to the workers (minus their idle PSS), section g; pickling (stdlib "
            f"executor): {fmt_ratio(figures.get('dropin_pss_stdlib'))}",
            "g",
        ),
    ]
