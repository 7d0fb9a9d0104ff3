"""Benchmarks of shared_memory_array against its peers, measured side by side in one run.

Usage, from the repository's root::

    python -m benchmarks                            # the full run, about 10 to 15 minutes
    python -m benchmarks --quick                    # a smoke run with small sizes, under a minute
    python -m benchmarks --sections dask --merge    # redo one section in RESULTS.md

``python benchmarks/run.py`` takes the same options.  The full run writes
``benchmarks/RESULTS.md``; ``benchmarks/README.md`` says what each table measures
and how to read it.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import resource
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import (
    bench_attach,
    bench_dask,
    bench_dropin,
    bench_handoff,
    bench_memory,
    bench_rowsum,
    bench_share,
)
from .config import FULL, QUICK, Config
from .harness import SHM_DIR
from .machine import load_average, machine_facts
from .peers import PEER_NAMES, Peers, load_peers
from .report import Report, fmt_ratio, merge_markdown, render_markdown
from .targets import build_targets

HERE = Path(__file__).resolve().parent

SectionRun = Callable[[Config, Peers, Any, Report], None]
# letter: (name, what runs it), in the order of the report
SECTIONS: dict[str, tuple[str, SectionRun]] = {
    "a": ("share", bench_share.run),
    "b": ("handoff", bench_handoff.run),
    "c": ("attach", bench_attach.run),
    "d": ("memory", bench_memory.run),
    "e": ("rowsum", bench_rowsum.run),
    "f": ("dask", bench_dask.run),
    "g": ("dropin", bench_dropin.run),
}


def parse_sections(text: str) -> str:
    """Letters of the sections named by ``text``: letters (``ac``) or names (``dask``)."""
    letters = {name: key for key, (name, _run) in SECTIONS.items()}
    keys = ""
    for token in text.replace(",", " ").split():
        if token in letters:
            keys += letters[token]
        elif set(token) <= set(SECTIONS):
            keys += token
        else:
            raise argparse.ArgumentTypeError(
                f"unknown section {token!r}: letters {''.join(SECTIONS)} or names "
                f"{', '.join(letters)}"
            )
    return keys


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and counts, < 1 min")
    parser.add_argument(
        "--output",
        type=Path,
        help="markdown file to write (default: benchmarks/RESULTS.md, or "
        "benchmarks/RESULTS-quick.md with --quick)",
    )
    parser.add_argument(
        "--sections",
        type=parse_sections,
        default="".join(SECTIONS),
        help="which sections to run, by letter or name: e.g. 'ac', 'dask' or 'd,dask' "
        f"({', '.join(f'{key}={name}' for key, (name, _run) in SECTIONS.items())}; "
        "default: all)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rest of the output file: replace (or add) only this run's sections, "
        "each with this run's facts, and its targets' rows",
    )
    parser.add_argument(
        "--start-method",
        choices=multiprocessing.get_all_start_methods(),
        default=multiprocessing.get_start_method(allow_none=True) or None,
        help="multiprocessing start method (default: this platform's default)",
    )
    parser.add_argument(
        "--without",
        default="",
        help="comma-separated peers to treat as not installed (joblib,sharedarray,torch)",
    )
    return parser.parse_args(argv)


def _raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 65536), hard))


def _our_leftovers(before: set[str]) -> list[str]:
    """Names this run added to /dev/shm (ours or a peer's made here) that are still there."""
    mine = ("smabench_", f"sma_{os.getpid()}_")
    return sorted(name for name in set(os.listdir(SHM_DIR)) - before if name.startswith(mine))


def main(argv: Sequence[str] | None = None, prog: str = "python -m benchmarks") -> int:
    """Run the benchmarks; print every table and write the markdown results.

    ``prog`` is how the run was started, as RESULTS.md records it in "command".
    """
    args_given = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(args_given, prog)
    started = time.perf_counter()
    load_at_start = load_average()
    command = shlex.join([*shlex.split(prog), *args_given])
    config = QUICK if args.quick else FULL
    output: Path = args.output or HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    ctx = multiprocessing.get_context(args.start_method)
    _raise_open_file_limit()
    before = set(os.listdir(SHM_DIR))
    peers = load_peers({name.strip().lower() for name in args.without.split(",") if name})
    for name in PEER_NAMES:
        print(f"{name}: {peers.version(name)}")
    report = Report()
    try:
        for key, (_name, run) in SECTIONS.items():
            if key in args.sections:
                run(config, peers, ctx, report)
    finally:
        gc.collect()
        leftovers = _our_leftovers(before)
        for name in leftovers:  # only names this run made; should never happen
            os.unlink(os.path.join(SHM_DIR, name))
        if leftovers:
            print(f"WARNING: removed leftovers from /dev/shm: {leftovers}", file=sys.stderr)
    facts = machine_facts(peers, ctx, command, started, load_at_start)
    targets = build_targets(report.figures, config)
    print("\n## Targets\n")
    for target in targets:
        print(
            f"- {target.label}: {fmt_ratio(target.measured)} (limit {target.limit:g}) "
            f"-> {target.verdict()}"
        )
    if args.merge and output.exists():
        text = merge_markdown(output.read_text(), report, facts, targets, config.quick)
    else:
        text = render_markdown(report, facts, targets, config.quick)
    output.write_text(text + "\n")
    print(f"\nwrote {output}")
    return 1 if leftovers else 0
