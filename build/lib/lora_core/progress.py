"""Progress lines for long work, in one format that logs, the web page and tests all parse.

``progress: 42.0% step 21/50 loss 0.1234 elapsed 3s eta 4s`` — ``loss`` only for training.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

LINE = re.compile(
    r"progress:\s*(?P<percent>[\d.]+)% step (?P<step>\d+)/(?P<total>\d+)(?: .*?)?"
    r"(?: elapsed (?P<elapsed>\d+)s eta (?P<eta>\d+)s)?$"
)


class Progress:
    """Calls ``log`` with a progress line at least every ``every`` of the way (and at the end)."""

    def __init__(self, total: int, log: Callable[[str], None], every: float = 0.05, what: str = "") -> None:
        self.total, self.log, self.what = total, log, what
        self.stride = max(1, math.ceil(total * every))
        self.start = time.perf_counter()

    def step(self, step: int, extra: str = "") -> None:
        if step % self.stride and step != self.total:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / step * (self.total - step)
        self.log(
            f"progress: {100 * step / self.total:5.1f}% step {step}/{self.total}"
            f"{' ' + self.what if self.what else ''}{' ' + extra if extra else ''} "
            f"elapsed {elapsed:.0f}s eta {eta:.0f}s"
        )
