"""Command line: ``python -m shared_memory_array`` or ``shared-memory-array``.

Subcommands: ``list``, ``info NAME``, ``clean [--dry-run]``, ``demo``; ``--json``
gives machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from ._errors import SharedMemoryArrayError
from ._inspect import SegmentInfo, clean_segments, list_segments, segment_info


def _size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover


def _pid(info: SegmentInfo, pid: int, alive: bool) -> str:
    if pid == 0:
        return "unknown"
    if not info.same_pid_namespace:  # the number names another namespace's process
        return f"{pid} (other PID namespace)"
    return f"{pid} ({'alive' if alive else 'dead'})"


def _table(infos: list[SegmentInfo]) -> str:
    rows = [("NAME", "SHAPE", "DTYPE", "SIZE", "COMMITTED", "CREATOR", "MAPPED BY")]
    rows += [
        (
            info.name,
            str(info.shape),
            info.dtype or "-",  # a draft without a header yet
            _size(info.nbytes),
            _size(info.committed),
            _pid(info, info.creator_pid, info.creator_alive),
            ", ".join(map(str, info.mapped_by)) or "-",
        )
        for info in infos
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    )


def _details(info: SegmentInfo) -> str:
    return "\n".join(
        [
            f"name:       {info.name}",
            f"array:      shape {info.shape}, dtype {info.dtype}, {_size(info.nbytes)}",
            f"segment:    {info.size} bytes, {info.committed} bytes committed",
            f"creator:    {_pid(info, info.creator_pid, info.creator_alive)}",
            f"unlinks it: {_pid(info, info.keeper_pid, info.keeper_alive)}",
            f"namespace:  PID namespace {info.pid_namespace or 'unknown'}",
            f"draft:      {'yes (being made, or left half-made)' if info.draft else 'no'}",
            f"mapped by:  {', '.join(map(str, info.mapped_by)) or 'nobody'}",
            f"abandoned:  {'yes' if info.abandoned else 'no'}",
        ]
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shared-memory-array",
        description="Share NumPy arrays between processes through shared memory; "
        "see and clean this library's segments.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON for scripts")
    commands.add_parser("list", parents=[as_json], help="list this user's segments")
    info = commands.add_parser("info", parents=[as_json], help="describe one segment")
    info.add_argument("name")
    clean = commands.add_parser(
        "clean",
        parents=[as_json],
        help="unlink segments and drafts whose creator and keeper are dead and that "
        "nobody maps (only those made in this PID namespace)",
    )
    clean.add_argument("--dry-run", action="store_true", help="only show what would go")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run

        return 0 if run(size_mb=args.size_mb, workers=args.workers)["same_result"] else 1
    try:
        if args.command == "list":
            infos = list_segments()
            print(
                json.dumps([info.as_dict() for info in infos], indent=2)
                if args.json
                else _table(infos)
            )
        elif args.command == "info":
            found = segment_info(args.name)
            print(json.dumps(found.as_dict(), indent=2) if args.json else _details(found))
        else:
            removed = clean_segments(dry_run=args.dry_run)
            if args.json:
                print(json.dumps([info.as_dict() for info in removed], indent=2))
            else:
                verb = "would unlink" if args.dry_run else "unlinked"
                for info in removed:
                    print(f"{verb} {info.name} ({_size(info.committed)})")
                print(f"{len(removed)} abandoned segment(s) {verb}")
    except (SharedMemoryArrayError, OSError) as error:
        print(f"shared-memory-array: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
