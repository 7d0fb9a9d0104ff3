"""The library's targets: the Targets table at the top of RESULTS.md.

Each target names the figure a section put in `Report.figures`, its limit, and the
letter of that section (``--merge`` replaces a target's row with its section's run).
The order of this list is the order of the table's rows.
"""

from __future__ import annotations

from .config import Config
from .report import MICRO, Target, fmt_ratio


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
    ]
