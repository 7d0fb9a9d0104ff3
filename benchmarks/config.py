"""Sizes and repetition counts of a run: the full run, and ``--quick`` for a smoke run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    """Sizes and repetition counts of one run."""

    quick: bool
    share_sizes_mb: tuple[int, ...]
    share_reps: tuple[int, ...]  # one count per size
    handoff_mb: int
    handoff_tasks: int
    handoff_pickle_tasks: int
    handoff_torch_tasks: int
    handoff_reps: int
    handoff_target_reps: int  # for the target rows: passing nothing, ours, the controls
    attach_mb: int
    attach_iters: int
    attach_warm_iters: int
    attach_reps: int
    memory_mb: int
    memory_workers: int
    memory_reps: int
    rowsum_shape: tuple[int, int]
    rowsum_reps: int
    bandwidth_mb: int
    dask_mb: int
    dask_workers: int
    dask_pss_reps: int
    dask_time_reps: int
    dropin_mb: int
    dropin_tasks: int
    dropin_pickle_tasks: int
    dropin_joblib_tasks: int
    dropin_reps: int
    dropin_result_mb: int  # each result's size
    dropin_results: int
    dropin_result_reps: int
    dropin_memory_mb: int
    dropin_memory_workers: int
    dropin_memory_reps: int


FULL = Config(
    quick=False,
    share_sizes_mb=(8, 80, 800),
    share_reps=(21, 11, 7),
    handoff_mb=80,
    handoff_tasks=10_000,
    handoff_pickle_tasks=24,
    handoff_torch_tasks=1000,
    handoff_reps=7,
    handoff_target_reps=31,
    attach_mb=80,
    attach_iters=3000,
    attach_warm_iters=30_000,
    attach_reps=9,
    memory_mb=800,
    memory_workers=4,
    memory_reps=3,
    rowsum_shape=(10_000, 10_000),
    rowsum_reps=9,
    bandwidth_mb=400,
    dask_mb=400,
    dask_workers=4,
    dask_pss_reps=3,
    dask_time_reps=7,
    dropin_mb=80,
    dropin_tasks=10_000,
    dropin_pickle_tasks=8,
    dropin_joblib_tasks=1000,
    dropin_reps=5,
    dropin_result_mb=400,
    dropin_results=4,
    dropin_result_reps=3,
    dropin_memory_mb=800,
    dropin_memory_workers=4,
    dropin_memory_reps=3,
)

QUICK = Config(
    quick=True,
    share_sizes_mb=(8,),
    share_reps=(3,),
    handoff_mb=8,
    handoff_tasks=1000,
    handoff_pickle_tasks=6,
    handoff_torch_tasks=100,
    handoff_reps=2,
    handoff_target_reps=3,
    attach_mb=8,
    attach_iters=300,
    attach_warm_iters=3000,
    attach_reps=3,
    memory_mb=16,
    memory_workers=4,
    memory_reps=1,
    rowsum_shape=(2000, 4000),
    rowsum_reps=3,
    bandwidth_mb=32,
    dask_mb=16,
    dask_workers=4,
    dask_pss_reps=1,
    dask_time_reps=2,
    dropin_mb=8,
    dropin_tasks=1000,
    dropin_pickle_tasks=6,
    dropin_joblib_tasks=200,
    dropin_reps=2,
    dropin_result_mb=16,
    dropin_results=4,
    dropin_result_reps=2,
    dropin_memory_mb=16,
    dropin_memory_workers=4,
    dropin_memory_reps=1,
)
