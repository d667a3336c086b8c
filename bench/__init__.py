"""Benchmarks: each metric is a ratio against a baseline measured in the same run.

A machine that lacks some of the project's packages (a lent GPU machine has no diffusers and no pydantic) finds them
in ``.build/device-site`` (``bench/device_pack.sh``), placed after its own packages on the path.
"""

import sys
from pathlib import Path

_DEVICE_SITE = Path(__file__).resolve().parent.parent / ".build" / "device-site"
if _DEVICE_SITE.is_dir() and str(_DEVICE_SITE) not in sys.path:
    sys.path.append(str(_DEVICE_SITE))
