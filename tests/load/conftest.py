"""The load suite imports its driver from ``bench`` (the repository root must be importable: ``python -m pytest``
puts the working directory first; a bare ``pytest`` from elsewhere may not)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
