"""``python -m benchmarks``: run the benchmarks (options: ``python -m benchmarks --help``)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main(prog="python -m benchmarks"))
