"""Command line: ``python -m shared_memory_array demo``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="shared-memory-array",
        description="Share NumPy arrays between processes through shared memory.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="compare handing a large array to workers by pickling and by sharing"
    )
    demo.add_argument("--size-mb", type=int, default=128, help="array size (default 128)")
    demo.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="worker processes (default: CPUs, at most 4)",
    )
    args = parser.parse_args(argv)

    if args.command == "demo":
        from ._demo import run

        figures = run(size_mb=args.size_mb, workers=args.workers)
        return 0 if figures["same_result"] else 1
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    raise SystemExit(main())
