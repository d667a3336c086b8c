"""The HTTP server around the app: uvicorn with the limits a public service needs, and access logs without secrets.

uvicorn times out idle keep-alive connections but not a client that sends its request headers one byte at a time:
it would hold a connection forever. So the protocol below closes a connection whose request headers are not
complete within ``header_timeout_s`` (a body that stops arriving is the app's ``BodyGuard``: 408).
``limit_concurrency`` answers 503 past that many open connections. A reverse proxy in front should set the same
(docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from lora_core.service.config import ServiceConfig

log = logging.getLogger("lora_studio")


class HeaderTimeoutH11(H11Protocol):
    """Closes a connection whose next request's headers have not all arrived ``header_timeout_s`` after it opened
    (or after its previous response ended): a slow-headers client cannot hold it."""

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a request's headers were parsed
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()


class RedactSecrets(logging.Filter):
    """Access-log lines never show a worker's upload key (the one credential coglet can only carry in a path)."""

    _UPLOAD = re.compile(r"(/internal/workers/[^/\s]+/uploads/)[^/\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._UPLOAD.sub(r"\1…", a) if isinstance(a, str) else a for a in record.args)
        return True


def run(
    app: ASGIApp,
    config: ServiceConfig,
    log_level: str,
    drain: Callable[[float], bool] | None = None,
    drain_s: float = 0.0,
) -> None:
    """Serve until SIGTERM or Ctrl-C. With ``drain``, the first signal lets this process's agents finish what they
    run (up to ``drain_s``) while HTTP keeps serving (their Cog servers' webhooks and uploads arrive here, clients
    keep polling); then the usual graceful shutdown. A second signal stops at once."""
    HeaderTimeoutH11.header_timeout_s = config.header_timeout_s
    logging.getLogger("uvicorn.access").addFilter(RedactSecrets())
    settings = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        http=HeaderTimeoutH11,
        timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]  # uvicorn hands it to call_later: a float works
        limit_concurrency=config.max_connections or None,
        timeout_graceful_shutdown=5,
    )
    (DrainingServer(settings, drain, drain_s) if drain is not None else uvicorn.Server(settings)).run()


class DrainingServer(uvicorn.Server):
    """uvicorn whose first SIGTERM / Ctrl-C drains (``run``) instead of closing the port at once: the agents'
    results arrive over this same port."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[float], bool], drain_s: float) -> None:
        super().__init__(config)
        self.drain, self.drain_s = drain, drain_s
        self.draining: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining is not None or self.should_exit:
            return super().handle_exit(sig, frame)  # a second signal: stop now
        self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
        log.warning(
            "%s: taking no new predictions; running ones may finish (up to %.0f s; again to stop now)",
            signal.Signals(sig).name,
            self.drain_s,
        )

        def drain_then_exit() -> None:
            try:
                if not self.drain(self.drain_s):
                    log.warning("the drain ran out after %.0f s: stopping predictions mid-way", self.drain_s)
            finally:
                self.should_exit = True

        self.draining = threading.Thread(target=drain_then_exit, name="drain", daemon=True)
        self.draining.start()
