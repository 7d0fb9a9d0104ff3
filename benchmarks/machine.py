"""What a run ran on and with: the "Machine and run" table at the top of RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

import shared_memory_array

from .harness import SHM_DIR
from .peers import Peers, dist_version

HERE = Path(__file__).resolve().parent


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "unknown"


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _meminfo(key: str) -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``1.10 / 1.30 / 1.37``."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def machine_facts(
    peers: Peers, ctx: Any, command: str, started: float, load_at_start: str
) -> list[tuple[str, str]]:
    """What the run ran on and with, for the top of RESULTS.md."""
    shm = os.statvfs(SHM_DIR)
    torch = peers.get("torch")
    torch_version = peers.version("torch")
    if torch is not None:
        torch_version += f" ({torch.get_num_threads()} threads)"
    return [
        ("date (UTC)", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("command", f"`{command}`"),
        ("CPU", _cpu_model()),
        ("cores", f"{os.cpu_count()} logical ({len(os.sched_getaffinity(0))} usable)"),
        ("RAM", f"{_meminfo('MemTotal') / (1 << 30):.1f} GiB"),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("start method", ctx.get_start_method()),
        ("numpy", np.__version__),
        (
            "shared_memory_array",
            f"{shared_memory_array.__version__} (git {_git_commit()}, working tree as run)",
        ),
        ("joblib", peers.version("joblib")),
        ("SharedArray", peers.version("SharedArray")),
        ("torch", torch_version),
        ("dask / distributed", f"{dist_version('dask')} / {dist_version('distributed')}"),
        ("/dev/shm", f"tmpfs, {shm.f_blocks * shm.f_frsize / (1 << 30):.1f} GiB"),
        (
            "transparent huge pages",
            f"anon: {_read('/sys/kernel/mm/transparent_hugepage/enabled')}; shmem: "
            f"{_read('/sys/kernel/mm/transparent_hugepage/shmem_enabled')}",
        ),
        ("load average at the start (1/5/15 min)", load_at_start),
        ("load average at the end (1/5/15 min)", load_average()),
        ("wall time of the run", f"{time.perf_counter() - started:.0f} s"),
    ]
