"""Progress lines for long work, in tqdm's shape, which logs, the web page, tests and Replicate's clients all parse.

`` 42%|████▏     | 21/50 [00:03<00:04,  7.00it/s, loss=0.1234]``: tqdm's own ``format_meter``, so Replicate's
progress regex (``^\\s*(\\d+)%\\s*\\|.+?\\|\\s*(\\d+)\\/(\\d+)``) and its web page's progress bar read them as they
read any model's; what the work is (``sampling``) and the training's loss go in tqdm's postfix.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

from tqdm import tqdm

LINE = re.compile(
    r"^\s*(?P<percent>\d+)%\|[^|]*\|\s*(?P<step>\d+)/(?P<total>\d+)"
    r"(?: \[(?P<elapsed>[\d:]+)<(?P<eta>[\d:]+|\?)[,\]])?"
)


def matches(logs: str) -> list[re.Match[str]]:
    """Every progress line of ``logs``, parsed, in order (the last is where the work stands)."""
    found = (LINE.search(line) for line in (logs or "").splitlines())
    return [m for m in found if m]


class Progress:
    """Calls ``log`` with a progress line at least every ``every`` of the way (and at the end)."""

    def __init__(self, total: int, log: Callable[[str], None], every: float = 0.05, what: str = "") -> None:
        self.total, self.log, self.what = total, log, what
        self.stride = max(1, math.ceil(total * every))
        self.start = time.perf_counter()

    def step(self, step: int, **postfix: float | str) -> None:
        """``postfix``: figures shown after the rate (``loss=0.1234``)."""
        if step % self.stride and step != self.total:
            return
        shown = ", ".join([*([self.what] if self.what else []), *(f"{k}={_figure(v)}" for k, v in postfix.items())])
        self.log(tqdm.format_meter(step, self.total, time.perf_counter() - self.start, postfix=shown or None))


def _figure(value: float | str) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def seconds(clock: str | None) -> int | None:
    """tqdm's ``[h:]mm:ss`` in seconds (None for ``?`` or nothing)."""
    if not clock or clock == "?":
        return None
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total
