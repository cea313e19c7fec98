"""``python benchmarks/run.py [--quick] [--json FILE]``: the same as ``python -m benchmarks``."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.suite import main

if __name__ == "__main__":
    raise SystemExit(main())
