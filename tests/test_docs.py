"""Every Python code block of the README and every example runs, quietly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd, check=False
    )


@pytest.mark.parametrize("block", README_BLOCKS, ids=lambda block: block.splitlines()[0][:40])
def test_readme_code_block_runs(block, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(block)
    result = run([str(script)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(example, tmp_path):
    result = run([str(example)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
