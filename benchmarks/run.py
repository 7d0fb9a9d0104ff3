"""``python benchmarks/run.py [options]``: the same as ``python -m benchmarks [options]``.

Kept so that the command in the docs and in RESULTS.md keeps working from any
directory.  The package lives beside this file; see ``cli.py`` and README.md.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

if __name__ == "__main__":
    # A script's own directory comes first on sys.path; put the repository's root
    # there instead, so that ``benchmarks`` imports as a package (here and in spawned
    # workers, which inherit sys.path) and its modules shadow nothing.
    HERE = Path(__file__).resolve().parent
    sys.path[:] = [path for path in sys.path if Path(path or ".").resolve() != HERE]
    sys.path.insert(0, str(HERE.parent))
    cli = importlib.import_module("benchmarks.cli")
    sys.exit(cli.main(prog="python benchmarks/run.py"))
