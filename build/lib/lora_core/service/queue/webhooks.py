"""Users' webhooks: signed like Replicate's, filtered by event, retried with backoff, every attempt recorded.

Each delivery connects to the address its host was checked at (private and local addresses
are refused unless allowed), so a webhook cannot be aimed at the service's own network.
A receiver that is down delays nothing else: deliveries run on their own threads and a
prediction's result never depends on them.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lora_core.net.fetch import FetchError, checked_url_address, system_resolver
from lora_core.service.auth.signing import Signer
from lora_core.service.storage.db import utcnow, webhook_deliveries as W

EVENTS = ("start", "output", "logs", "completed")


def check_url(url: str, allowed_private_hosts: frozenset[str], resolver=system_resolver) -> None:
    """``ValueError`` saying why the service will not send to ``url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("webhook must be an http:// or https:// URL")
    try:
        checked_url_address(parts, allowed_private_hosts, resolver)
    except FetchError as e:
        raise ValueError(f"webhook refused: {e}") from None


class Webhooks:
    def __init__(
        self,
        engine: Engine,
        signer: Signer,
        allowed_private_hosts: frozenset[str],
        *,
        retries: int = 6,
        backoff_s: float = 1.0,
        resolver=system_resolver,
    ) -> None:
        self.engine, self.signer, self.allowed = engine, signer, allowed_private_hosts
        self.retries, self.backoff_s, self.resolver = retries, backoff_s, resolver
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook")
        self._order: dict[str, threading.Lock] = {}  # one delivery at a time per prediction, in order
        self._guard = threading.Lock()

    def send(self, row: dict, event: str, payload: dict) -> None:
        """Queue ``payload`` for ``row``'s webhook if it asked for ``event``."""
        wanted = row.get("webhook_events_filter") or list(EVENTS)
        if not row.get("webhook") or event not in wanted:
            return
        delivery_id = "msg_" + secrets.token_hex(12)
        with self.engine.begin() as c:
            c.execute(
                W.insert().values(
                    id=delivery_id,
                    prediction_id=row["id"],
                    event=event,
                    url=row["webhook"],
                    status="pending",
                    attempts=0,
                    created_at=utcnow(),
                )
            )
        with self._guard:
            lock = self._order.setdefault(row["id"], threading.Lock())
        body = json.dumps(payload).encode()
        self.pool.submit(self._deliver, lock, delivery_id, row["webhook"], body, event == "completed")

    def _deliver(self, lock: threading.Lock, delivery_id: str, url: str, body: bytes, final: bool) -> None:
        attempts, error = 0, None
        tries = self.retries if final else min(self.retries, 2)  # a missed log update is replaced by the next
        with lock:
            for attempts in range(1, tries + 1):
                error = self._post(url, body, delivery_id)
                if error is None:
                    break
                if attempts < tries:
                    time.sleep(self.backoff_s * 2 ** (attempts - 1))
        with self.engine.begin() as c:
            c.execute(
                W.update()
                .where(W.c.id == delivery_id)
                .values(
                    status="delivered" if error is None else "failed",
                    attempts=attempts,
                    last_error=error,
                    completed_at=utcnow(),
                )
            )

    def _post(self, url: str, body: bytes, delivery_id: str) -> str | None:
        import urllib3

        parts = urlsplit(url)
        try:
            port, address = checked_url_address(parts, self.allowed, self.resolver)
        except FetchError as e:
            return str(e)
        timeout = urllib3.Timeout(connect=5, read=10)
        if parts.scheme == "https":
            pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
                address,
                port,
                timeout=timeout,
                retries=False,
                server_hostname=parts.hostname,
                assert_hostname=parts.hostname,
            )
        else:
            pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "lora-studio-webhook",
            "Host": parts.netloc,
            **self.signer.webhook_headers(delivery_id, body),
        }
        try:
            response = pool.urlopen(
                "POST",
                (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                body=body,
                headers=headers,
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as e:
            return f"could not deliver: {type(e).__name__}"
        finally:
            pool.close()
        return None if 200 <= response.status < 300 else f"receiver answered HTTP {response.status}"

    def deliveries(self, prediction_id: str) -> list[dict]:
        with self.engine.connect() as c:
            return [
                dict(r)
                for r in c.execute(
                    sa.select(W).where(W.c.prediction_id == prediction_id).order_by(W.c.created_at)
                ).mappings()
            ]

    def forget(self, prediction_id: str) -> None:
        """Drop the ordering lock of a finished prediction (after its last delivery was queued)."""
        with self._guard:
            self._order.pop(prediction_id, None)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
