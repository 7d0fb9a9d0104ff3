"""The report: figures formatted for tables, sections, targets, and RESULTS.md written or merged.

RESULTS.md is a preamble, then ``## `` blocks: "Machine and run", "Targets", then one
block per section, titled ``## <letter>. <name>``.  `merge_markdown` relies on that
shape to replace (or add) one section and its rows of the Targets table, so keep it.
"""

from __future__ import annotations

import itertools
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

# Non-ASCII characters of the tables, spelled as escapes (ruff's RUF001 flags them)
TIMES = "\u00d7"  # multiplication sign, for ratios
DASH = "\u2013"  # en dash: ranges, and alone a figure that was not measured
MICRO = "\u00b5"  # micro sign

QUICK_MARK = " (**--quick smoke run: small sizes, not representative**)"
TARGET_HEADERS = ["target", "limit", "measured", "verdict", "measured as"]
ONE_RUN = "All figures come from the one run described below; compare ratios within it"
MERGED_RUNS = (
    "All figures come from the one run described below, except the sections that "
    "describe a run of their own (written with `--merge`); compare ratios within one run"
)

# --------------------------------------------------------------------------- figures


def unit_for(seconds: float) -> tuple[str, float]:
    """Pick a display unit for a duration: (name, scale)."""
    if seconds < 1e-3:
        return f"{MICRO}s", 1e6
    if seconds < 1.0:
        return "ms", 1e3
    return "s", 1.0


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_range(values: Sequence[float], unit: str = "", scale: float = 1.0) -> str:
    """Format samples as ``median (min-max)`` in a fixed unit."""
    median = statistics.median(values) * scale
    low, high = min(values) * scale, max(values) * scale
    suffix = f" {unit}" if unit else ""
    if len(values) == 1:
        return f"{_number(median)}{suffix}"
    return f"{_number(median)}{suffix} ({_number(low)}{DASH}{_number(high)})"


def fmt_time(values: Sequence[float]) -> str:
    """Format durations as ``median (min-max)`` in a unit chosen from the median."""
    unit, scale = unit_for(statistics.median(values))
    return fmt_range(values, unit, scale)


def fmt_ratio(value: float | None) -> str:
    """Format a ratio such as ``1.07x`` (with a multiplication sign); a dash if not measured."""
    return DASH if value is None or math.isnan(value) else f"{value:.2f}{TIMES}"


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: bool = True
) -> list[str]:
    """Lines of a markdown table; with ``numeric``, columns after the first align right."""
    rule = "---:" if numeric else "---"
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join(["---"] + [rule] * (len(headers) - 1)) + "|")
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def method_link(anchor: str) -> str:
    """A link to the part of README.md that says how a section measures."""
    return f"How it is measured: [README.md](README.md#{anchor})."


# --------------------------------------------------------------------------- the report


@dataclass
class Section:
    """One section of the report: a title, a short caption, tables and notes."""

    title: str
    intro: list[str]
    tables: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Target:
    """One of the library's targets and the ratio measured for it in this run."""

    label: str
    measured: float | None
    limit: float
    at_most: bool  # True: measured must be <= limit; False: >= limit
    how: str
    section: str  # the letter of the section that measures it

    def verdict(self) -> str:
        """``met`` with the margin, or ``missed by`` how much."""
        if self.measured is None or math.isnan(self.measured):
            return "not measured"
        if self.at_most:
            excess = self.measured / self.limit - 1
            met = self.measured <= self.limit
        else:
            excess = 1 - self.measured / self.limit
            met = self.measured >= self.limit
        if met:
            return f"met ({-excess * 100:.0f}% margin)"
        return f"**missed** by {excess * 100:.0f}%"


@dataclass
class Report:
    """Everything measured in this run, printed as it comes and written as markdown."""

    sections: list[Section] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    def add(self, section: Section) -> None:
        """Record a finished section and print it."""
        self.sections.append(section)
        print(f"\n## {section.title}\n", flush=True)
        for table in section.tables:
            print("\n".join(table) + "\n")
        for note in section.notes:
            print(f"- {note}")
        sys.stdout.flush()


# --------------------------------------------------------------------------- markdown


def target_rows(targets: Sequence[Target], how_suffix: str = "") -> list[list[str]]:
    """Cells of the Targets table."""
    return [
        [
            target.label,
            ("≤ " if target.at_most else "≥ ") + f"{target.limit:g}",
            fmt_ratio(target.measured),
            target.verdict(),
            target.how + how_suffix,
        ]
        for target in targets
    ]


def render_section(section: Section, own_run: Sequence[str] = ()) -> list[str]:
    """Lines of one section; ``own_run`` goes first, under the title."""
    lines = [f"## {section.title}", "", *own_run]
    for paragraph in section.intro:
        lines += [paragraph, ""]
    for table in section.tables:
        lines += [*table, ""]
    lines += [f"- {note}" for note in section.notes]
    if section.notes:
        lines.append("")
    return lines


def render_markdown(
    report: Report, facts: list[tuple[str, str]], targets: list[Target], quick: bool
) -> str:
    """The whole RESULTS.md."""
    lines = [
        "# Benchmark results",
        "",
        "Generated by `benchmarks/run.py`"
        + (QUICK_MARK if quick else "")
        + "; do not edit by hand. What each table measures: "
        f"[README.md](README.md). {ONE_RUN}, not with other runs or machines.",
        "",
        "## Machine and run",
        "",
        *markdown_table(["", ""], [[key, value] for key, value in facts], numeric=False),
        "",
        "## Targets",
        "",
        *markdown_table(TARGET_HEADERS, target_rows(targets), numeric=False),
        "",
    ]
    for section in report.sections:
        lines += render_section(section)
    return "\n".join(lines)


def merge_markdown(
    existing: str,
    report: Report,
    facts: list[tuple[str, str]],
    targets: list[Target],
    quick: bool,
) -> str:
    """``existing`` RESULTS.md with this run's sections and targets put in, the rest kept.

    A section replaces the one of the same title, or is added at the end; it starts
    with this run's facts and its own targets.  In the Targets table at the top, each
    target this run measured replaces its row (or is added), marked as a separate run.
    """
    lines = existing.rstrip("\n").split("\n")
    starts = [index for index, line in enumerate(lines) if line.startswith("## ")]
    if not starts:
        return render_markdown(report, facts, targets, quick)
    preamble = [line.replace(ONE_RUN, MERGED_RUNS) for line in lines[: starts[0]]]
    blocks = [lines[start:end] for start, end in zip(starts, [*starts[1:], len(lines)])]
    mark = QUICK_MARK if quick else ""
    for section in report.sections:
        key = section.title.split(".", 1)[0]
        own = [target for target in targets if target.section == key]
        own_run = [
            f"Measured in a separate run{mark}, described here, and merged into this file "
            "with `--merge`: compare its figures with each other, not with other sections'.",
            "",
            *markdown_table(["", ""], [[k, value] for k, value in facts], numeric=False),
            "",
        ]
        if own:
            own_run += [*markdown_table(TARGET_HEADERS, target_rows(own), numeric=False), ""]
        block = render_section(section, own_run)
        titles = [existing_block[0] for existing_block in blocks]
        if block[0] in titles:
            blocks[titles.index(block[0])] = block
        else:
            if blocks and blocks[-1][-1] != "":
                blocks[-1].append("")
            blocks.append(block)
        for target in own:
            if target.measured is None or math.isnan(target.measured):
                continue
            [cells] = target_rows([target], f" (separate run: see section {key})")
            row = "| " + " | ".join(cells) + " |"
            for existing_block in blocks:
                if existing_block[0] != "## Targets":
                    continue
                rows = [i for i, line in enumerate(existing_block) if line.startswith("| ")]
                same = [i for i in rows if existing_block[i].startswith(f"| {target.label} |")]
                if same:
                    existing_block[same[0]] = row
                elif rows:
                    existing_block.insert(rows[-1] + 1, row)
    return "\n".join([*preamble, *itertools.chain.from_iterable(blocks)]).rstrip("\n")
