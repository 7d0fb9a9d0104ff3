"""The API reference renders every public name, and the examples it shows run.

docs/reference.md is built by mkdocstrings from ``::: identifier`` directives, each
optionally followed by indented options.  These tests read the directives (and the
``members`` option under them) without building the site, so they need no mkdocs;
``mkdocs build --strict`` in CI checks that the directives render.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import importlib.util
import multiprocessing
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference.md"
PUBLIC_MODULES = ["shared_memory_array", "shared_memory_array.dask", "shared_memory_array.ray"]

DIRECTIVE = re.compile(r"^::: *(?P<identifier>[\w.]+) *$")
INLINE_MEMBERS = re.compile(r"^ +members: *\[(?P<names>[^\]]*)\] *$")
BLOCK_MEMBERS = re.compile(r"^ +members: *$")
MEMBER_ITEM = re.compile(r"^ +- *(?P<name>\w+) *$")


def directives(text: str) -> dict[str, list[str]]:
    """Each directive's identifier, with the names its ``members`` option lists."""
    found: dict[str, list[str]] = {}
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = DIRECTIVE.match(line)
        if match is None:
            continue
        members = found.setdefault(match["identifier"], [])
        options = lines[number + 1 :]
        for index, option in enumerate(options):
            if not option.startswith("    "):  # the options end with the indented block
                break
            inline = INLINE_MEMBERS.match(option)
            if inline is not None:
                members += [name.strip() for name in inline["names"].split(",") if name.strip()]
            elif BLOCK_MEMBERS.match(option):
                for item in options[index + 1 :]:
                    listed = MEMBER_ITEM.match(item)
                    if listed is None:
                        break
                    members.append(listed["name"])
    return found


def documented(text: str) -> set[str]:
    """The dotted names a reference page renders a section for."""
    return {
        f"{identifier}.{member}" if member else identifier
        for identifier, members in directives(text).items()
        for member in ["", *members]
    }


def public_names(module: str) -> list[str]:
    """``module.__all__``, read from its source: importing the Dask module needs Dask."""
    spec = importlib.util.find_spec(module)
    assert spec is not None
    assert spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
        ):
            names: list[str] = ast.literal_eval(node.value)
            return names
    raise AssertionError(f"{module} has no literal __all__ to read")


def missing_from(text: str) -> list[str]:
    """The public names that a reference page does not render."""
    shown = documented(text)
    return [
        f"{module}.{name}"
        for module in PUBLIC_MODULES
        for name in public_names(module)
        if f"{module}.{name}" not in shown
    ]


def test_every_public_name_is_in_the_reference():
    missing = missing_from(REFERENCE.read_text())
    assert not missing, f"add a '::: name' directive to docs/reference.md for each of {missing}"


def test_a_public_name_left_out_of_the_reference_is_reported():
    text = REFERENCE.read_text()
    assert "::: shared_memory_array.share\n" in text
    assert missing_from(text.replace("::: shared_memory_array.share\n", "")) == [
        "shared_memory_array.share"
    ]


def test_directives_are_read_with_their_members():
    text = (
        "# Page\n\n::: pkg.Alpha\n\n::: pkg.mod\n    options:\n      members: [one, two]\n"
        "\n::: pkg.other\n    options:\n      heading_level: 2\n      members:\n"
        "        - three\n      show_source: false\n\n    members: [not, options]\n"
    )
    assert documented(text) == {"pkg.Alpha", "pkg.mod", "pkg.mod.one", "pkg.mod.two"} | {
        "pkg.other",
        "pkg.other.three",
    }


def resolve(identifier: str) -> Any:
    """The object a directive names: its longest importable module, then attributes."""
    parts = identifier.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for part in parts[split:]:
            obj = getattr(obj, part)
        return obj
    raise ModuleNotFoundError(identifier)


def run_examples(identifiers: list[str]) -> doctest.TestResults:
    """Run the docstring examples of the objects the directives name."""
    multiprocessing.set_start_method("spawn", force=True)  # as test_docs runs the pages
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    seen: set[int] = set()
    for identifier in identifiers:
        obj = resolve(identifier)
        if id(obj) in seen:  # an alias
            continue
        seen.add(id(obj))
        # A module's examples are its own objects'; a class's include its members'.
        module = None if isinstance(obj, types.ModuleType) else False
        for test in finder.find(obj, identifier, module=module, globs={}):
            runner.run(test)
    return runner.summarize(verbose=False)


def test_the_examples_in_the_reference_run(tmp_path):
    identifiers = sorted(directives(REFERENCE.read_text()))
    if importlib.util.find_spec("distributed") is None:
        identifiers = [name for name in identifiers if not name.startswith(PUBLIC_MODULES[1])]
    result = subprocess.run(
        [sys.executable, __file__, *identifiers],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


if __name__ == "__main__":
    failed, attempted = run_examples(sys.argv[1:])
    print(f"{attempted} examples, {failed} failed")
    sys.exit(1 if failed or not attempted else 0)
