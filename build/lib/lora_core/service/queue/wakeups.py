"""Wake-ups inside one service process: 'prediction X changed' and 'a prediction was queued'.

The database stays the truth (other processes change it too, so every waiter also re-reads it
on a short timeout); these only spare the waiting. This is the process's one piece of shared
mutable state besides the worker handles, and it holds no data.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict
from collections.abc import Iterator


class Wakeups:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = defaultdict(set)
        self.queued = threading.Condition()

    def prediction_changed(self, prediction_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(prediction_id, ()))
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def prediction_queued(self) -> None:
        with self.queued:
            self.queued.notify_all()

    def wait_for_queue(self, timeout: float) -> None:
        with self.queued:
            self.queued.wait(timeout)

    @contextlib.contextmanager
    def watching(self, prediction_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``prediction_id`` changes, for as long as the block lasts.

        Clear it *before* reading the row, then wait on it: no change can slip between.
        """
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters[prediction_id].add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                self._waiters[prediction_id].discard(entry)
                if not self._waiters[prediction_id]:
                    del self._waiters[prediction_id]
