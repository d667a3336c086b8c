"""Where a long-running predictor writes each prediction's output files, without keeping them forever.

Cog's server runs one prediction at a time per predictor process and has uploaded a prediction's
output files before it takes the next one; the files are then no longer needed, but nothing deleted
them: a worker running for weeks kept every image and LoRA it ever made. Now a predictor keeps the
folders of its last ``keep`` predictions (callers in Python, such as tests comparing two runs, can
still read a few recent results) and deletes older ones when the next prediction starts.
"""

from __future__ import annotations

import shutil
import tempfile
from itertools import count
from pathlib import Path


class OutputDirs:
    def __init__(self, prefix: str, keep: int = 4) -> None:
        self.prefix, self.keep = prefix, max(1, keep)
        self.root: Path | None = None
        self._numbers = count()

    def new(self) -> Path:
        """A fresh, empty folder for this prediction's outputs; all but the newest ``keep - 1`` older ones go."""
        if self.root is None or not self.root.is_dir():
            self.root = Path(tempfile.mkdtemp(prefix=self.prefix))
        older = sorted(self.root.iterdir())  # named by a counter: oldest first
        for old in older[: max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"{next(self._numbers):08d}-", dir=self.root))
