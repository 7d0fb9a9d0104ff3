"""Every Python code block of the README and docs/, and every example, runs quietly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import without_dask_heartbeat_races

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    pytest.param(block, id=f"{page.name}:{number}")
    for page in PAGES
    for number, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


# Run under spawn, the strictest start method (the default on macOS and Windows, and
# forkserver on Linux from Python 3.14): code that needs fork's copy of the parent,
# or lacks the __main__ guard, fails here.
SPAWN = "import multiprocessing; multiprocessing.set_start_method('spawn', force=True)\n"


def run_script(text: str, tmp_path: Path, **environment: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(SPAWN + text)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
        env={**os.environ, **environment},
    )
    assert result.returncode == 0, result.stderr
    assert without_dask_heartbeat_races(result.stderr) == ""


@pytest.mark.parametrize("block", BLOCKS)
def test_code_block_runs(block, tmp_path):
    run_script(block, tmp_path)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(example, tmp_path):
    run_script(example.read_text(), tmp_path)


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memfd segments need Linux")
@pytest.mark.parametrize("example", ["transfer_results.py", "dropin_executor.py"])
def test_hand_over_examples_run_with_memfd_segments(example, tmp_path):
    # What a container with a small /dev/shm gets: every segment a memfd.
    text = (ROOT / "examples" / example).read_text()
    run_script(text, tmp_path, SHARED_MEMORY_ARRAY_BACKEND="memfd")
