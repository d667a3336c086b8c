"""Users' webhooks: signed like Replicate's, filtered by event, retried with backoff, every attempt recorded.

Deliveries are rows, not promises held by one process: the event's JSON is stored when it happens, and every
service process runs a sender that claims due rows (a conditional UPDATE with a lease, so two processes never post
the same attempt, on SQLite and PostgreSQL alike) and posts them. A process that dies or restarts loses nothing:
its pending deliveries are sent by whoever runs next (at once after a restart under the same name, or by any other
process once the lease lapses), at least once, always under the same ``webhook-id`` so receivers can de-duplicate.
A prediction's deliveries go out in the order of its events: one waits while an earlier one is still pending.

Each delivery connects to the address its host was checked at (private and local addresses are refused unless
allowed), so a webhook cannot be aimed at the service's own network. A receiver that is down delays nothing else:
deliveries run on their own threads and a prediction's result never depends on them.
"""

from __future__ import annotations

import datetime
import json
import logging
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
LEASE_S = 60.0  # a claimed attempt is another process's to retry after this: well past one POST's 15 s limit
log = logging.getLogger("lora_studio.webhooks")


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
        instance: str,
        retries: int = 6,
        backoff_s: float = 1.0,
        poll_s: float = 1.0,
        senders: int = 8,
        resolver=system_resolver,
    ) -> None:
        """``instance`` names this process in claims (restarted under the same name, it takes its own back at
        once); ``poll_s`` is how soon it notices deliveries queued or freed by other processes."""
        self.engine, self.signer, self.allowed, self.instance = engine, signer, allowed_private_hosts, instance
        self.retries, self.backoff_s, self.poll_s, self.resolver = retries, backoff_s, poll_s, resolver
        self.senders = senders
        self.pool = ThreadPoolExecutor(max_workers=senders, thread_name_prefix="webhook")
        self._in_flight = 0
        self._guard = threading.Lock()
        self._last_seq = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self.engine.begin() as c:  # claims of this name are from a previous life: free them now
            c.execute(
                W.update()
                .where(W.c.status == "pending", W.c.claimed_by == self.instance)
                .values(claimed_by=None, claimed_until=None)
            )
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
        self._thread.start()

    def send(self, row: dict, event: str, payload: dict) -> None:
        """Store ``payload`` for ``row``'s webhook if it asked for ``event``; a sender posts it."""
        wanted = row.get("webhook_events_filter") or list(EVENTS)
        if not row.get("webhook") or event not in wanted:
            return
        now = utcnow()
        with self.engine.begin() as c:
            c.execute(
                W.insert().values(
                    id="msg_" + secrets.token_hex(12),
                    prediction_id=row["id"],
                    event=event,
                    url=row["webhook"],
                    body=json.dumps(payload),
                    seq=self._next_seq(),
                    status="pending",
                    attempts=0,
                    created_at=now,
                    next_attempt_at=now,
                )
            )
        self._wake.set()

    def _next_seq(self) -> int:
        """Increasing within this process and, across processes, in wall-clock order: a prediction's events
        come from one process at a time, so this orders them."""
        with self._guard:
            self._last_seq = max(time.time_ns(), self._last_seq + 1)
            return self._last_seq

    # ---- the sender -----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            try:
                for delivery in self._claim_due():
                    self.pool.submit(self._attempt, delivery)
            except Exception:
                log.exception("claiming webhook deliveries failed")

    def _claim_due(self) -> list[dict]:
        """Due deliveries with no earlier pending one of the same prediction, claimed for this process (as many
        as it has free senders)."""
        with self._guard:
            room = self.senders - self._in_flight
        if room <= 0:
            return []
        now = utcnow()
        free = sa.or_(W.c.claimed_until.is_(None), W.c.claimed_until < now)
        earlier = W.alias("earlier")
        blocked = sa.exists().where(
            earlier.c.prediction_id == W.c.prediction_id, earlier.c.status == "pending", earlier.c.seq < W.c.seq
        )
        query = (
            sa.select(W)
            .where(W.c.status == "pending", W.c.next_attempt_at <= now, free, ~blocked)
            .order_by(W.c.next_attempt_at)
            .limit(room)
        )
        with self.engine.connect() as c:
            due = [dict(r) for r in c.execute(query).mappings()]
        claimed = []
        lease = now + datetime.timedelta(seconds=LEASE_S)
        for delivery in due:
            with self.engine.begin() as c:
                won = c.execute(
                    W.update()
                    .where(W.c.id == delivery["id"], W.c.status == "pending", free)
                    .values(claimed_by=self.instance, claimed_until=lease)
                ).rowcount
            if won:
                claimed.append(delivery)
        with self._guard:
            self._in_flight += len(claimed)
        return claimed

    def _attempt(self, delivery: dict) -> None:
        try:
            error = self._post(delivery["url"], delivery["body"].encode(), delivery["id"])
            attempts = delivery["attempts"] + 1
            tries = max(1, self.retries if delivery["event"] == "completed" else min(self.retries, 2))
            now = utcnow()  # a missed log update is replaced by the next, so those get two tries
            values: dict = {"attempts": attempts, "last_error": error, "claimed_by": None, "claimed_until": None}
            if error is None or attempts >= tries:
                values.update(status="delivered" if error is None else "failed", completed_at=now)
                delay = 0.0
            else:
                delay = self.backoff_s * 2 ** (attempts - 1)
                values["next_attempt_at"] = now + datetime.timedelta(seconds=delay)
            with self.engine.begin() as c:
                c.execute(W.update().where(W.c.id == delivery["id"], W.c.claimed_by == self.instance).values(values))
        except Exception:
            log.exception("webhook delivery %s failed to record", delivery["id"])
            delay = self.poll_s
        finally:
            with self._guard:
                self._in_flight -= 1
        if delay:
            timer = threading.Timer(delay, self._wake.set)
            timer.daemon = True
            timer.start()
        else:
            self._wake.set()  # the prediction's next delivery may go now

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
        """What a prediction's owner may see of its deliveries, in the order they go out."""
        shown = (W.c.id, W.c.event, W.c.url, W.c.status, W.c.attempts, W.c.last_error, W.c.created_at)
        query = sa.select(*shown, W.c.next_attempt_at, W.c.completed_at).where(W.c.prediction_id == prediction_id)
        with self.engine.connect() as c:
            rows = [dict(r) for r in c.execute(query.order_by(W.c.seq, W.c.created_at)).mappings()]
        for r in rows:  # when the next try is, only while there will be one
            r["next_attempt_at"] = r["next_attempt_at"] if r["status"] == "pending" else None
        return rows

    def pending(self) -> int:
        """Deliveries not yet accepted or given up, from every process."""
        with self.engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(W).where(W.c.status == "pending")).scalar_one()

    def close(self) -> None:
        """Stop sending; what is left pending is sent by the next process (or this one, restarted)."""
        self._stopping.set()
        self._wake.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
