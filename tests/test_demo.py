"""The README's demo runs and reports both ways."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_quietly_and_agrees():
    result = subprocess.run(
        [sys.executable, "-m", "shared_memory_array", "demo", "--size-mb", "8", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "pickle the array per task" in result.stdout
    assert "SharedMemoryArray" in result.stdout
    assert "Same results: yes" in result.stdout
