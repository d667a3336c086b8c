"""Wake-ups: 'prediction X changed' and 'a prediction was queued', within a process and, on PostgreSQL, between
processes (``LISTEN``/``NOTIFY``: an API process answers ``Prefer: wait`` as soon as an agent elsewhere finishes,
and an idle agent claims a prediction as soon as any API process queues it).

The database stays the truth (a notification can be missed while a listener reconnects, and SQLite has none, so
every waiter also re-reads it on a short timeout); these only spare the waiting. This is the process's one piece
of shared mutable state besides the worker handles, and it holds no data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine

CHANNEL = "lora_studio"
log = logging.getLogger("lora_studio.wakeups")


class Wakeups:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = defaultdict(set)
        self.queued = threading.Condition()
        self.publish: Callable[[str], None] | None = None  # to other processes (``share_through``)

    def prediction_changed(self, prediction_id: str) -> None:
        self._changed_here(prediction_id)
        self._publish(f"changed:{prediction_id}")

    def prediction_queued(self) -> None:
        self._queued_here()
        self._publish("queued")

    def _publish(self, message: str) -> None:
        if self.publish is not None:
            try:
                self.publish(message)
            except sa.exc.SQLAlchemyError as e:  # the others fall back on re-reading: never fail the change itself
                log.warning("could not notify other processes (%s): %s", message, e)

    def _changed_here(self, prediction_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(prediction_id, ()))
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def _queued_here(self) -> None:
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


class Listener:
    """Shares a process's wake-ups with every other process on one PostgreSQL database: publishes with
    ``pg_notify`` and listens on its own connection, reconnecting after a failure. Nothing on SQLite."""

    def __init__(self, engine: Engine, wakeups: Wakeups) -> None:
        self.engine, self.wakeups = engine, wakeups
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.engine.dialect.name != "postgresql":
            return
        self.wakeups.publish = self._notify
        self._thread = threading.Thread(target=self._listen, name="wakeups", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.wakeups.publish = None

    def _notify(self, message: str) -> None:
        with self.engine.begin() as c:
            c.execute(sa.text("SELECT pg_notify(:channel, :message)"), {"channel": CHANNEL, "message": message})

    def _listen(self) -> None:
        import psycopg

        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stopping.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    while not self._stopping.is_set():
                        for note in connection.notifies(timeout=1.0):
                            self._deliver(note.payload)
            except (psycopg.Error, OSError) as e:
                log.warning("listening for other processes' wake-ups failed (%s); again in 1 s", e)
                self._stopping.wait(1.0)

    def _deliver(self, message: str) -> None:
        kind, _, prediction_id = message.partition(":")
        if kind == "changed" and prediction_id:
            self.wakeups._changed_here(prediction_id)
        elif kind == "queued":
            self.wakeups._queued_here()
