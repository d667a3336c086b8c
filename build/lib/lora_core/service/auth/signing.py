"""Every HMAC the service makes, each from the one service secret with its own purpose label.

- file URLs: ``?expires=…&sig=…``, valid until ``expires``; ``expires`` is rounded to a window so
  the same file gets the same URL for a while (a worker's LoRA cache is keyed by URL);
- worker credentials: the bearer token workers send with webhooks, and per-worker upload keys derived from it
  (Cog's server uploads outputs with no header, so the key is in its upload URL, never the token itself);
- user webhooks: Standard Webhooks signatures (``webhook-id``/``-timestamp``/``-signature``), as Replicate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from urllib.parse import quote

_DIGITS = re.compile(r"[0-9]{1,12}")  # ASCII only: str.isdigit() also takes '١٢٣' and '²', which int() then chokes on


class Signer:
    def __init__(self, secret: str, worker_token: str | None = None) -> None:
        self._secret = secret.encode()
        self._worker_token = worker_token

    def _mac(self, purpose: str, message: str) -> bytes:
        return hmac.new(self._secret, f"{purpose}\n{message}".encode(), hashlib.sha256).digest()

    # ---- file URLs ------------------------------------------------------------
    def file_query(self, file_id: str, window_s: int, now: float | None = None) -> str:
        now = time.time() if now is None else now
        expires = (math.floor(now / window_s) + 2) * window_s  # valid 1-2 windows, same URL within one
        sig = base64.urlsafe_b64encode(self._mac("file", f"{file_id}:{expires}")[:18]).decode()
        return f"expires={expires}&sig={sig}"

    def file_ok(self, file_id: str, expires: str | None, sig: str | None, now: float | None = None) -> bool:
        if not expires or not sig or not _DIGITS.fullmatch(expires) or len(sig) > 64:
            return False
        if int(expires) < (time.time() if now is None else now):
            return False
        want = base64.urlsafe_b64encode(self._mac("file", f"{file_id}:{int(expires)}")[:18]).decode()
        return hmac.compare_digest(want, sig)

    # ---- workers --------------------------------------------------------------
    def worker_token(self) -> str:
        """Given (``LORA_STUDIO_WORKER_TOKEN``, shared with remote GPU workers) or derived from the secret."""
        return self._worker_token or base64.urlsafe_b64encode(self._mac("worker", "token")).decode().rstrip("=")

    def worker_ok(self, token: str | None) -> bool:
        return token is not None and token != "" and hmac.compare_digest(self.worker_token(), token)

    def upload_key_ok(self, worker_name: str, key: str) -> bool:
        return hmac.compare_digest(upload_key(self.worker_token(), worker_name), key)

    # ---- user webhooks (Standard Webhooks, as Replicate) ------------------------
    def webhook_secret(self) -> str:
        return "whsec_" + base64.b64encode(self._mac("webhook", "secret")[:24]).decode()

    def webhook_headers(self, message_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        timestamp = int(time.time()) if timestamp is None else timestamp
        key = base64.b64decode(self.webhook_secret().removeprefix("whsec_"))
        signed = f"{message_id}.{timestamp}.".encode() + body
        signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        return {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": f"v1,{signature}"}


def upload_key(worker_token: str, worker_name: str) -> str:
    """The credential in one worker's upload URL: lets it store outputs of the prediction it runs, nothing else.
    Derived from the worker token, so a GPU container that has the token makes its own URL (``cog_serve``)."""
    mac = hmac.new(worker_token.encode(), f"upload\n{worker_name}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:24]).decode()


def upload_url(service_url: str, worker_name: str, worker_token: str) -> str:
    """Where a worker's Cog server PUTs its output files (it appends the file name)."""
    return (
        f"{service_url.rstrip('/')}/internal/workers/{quote(worker_name, safe='')}/uploads/"
        f"{upload_key(worker_token, worker_name)}/"
    )


def verify_webhook(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """What a receiver runs (Replicate's documented check); used by the tests and the docs' example."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    timestamp = headers.get("webhook-timestamp", "")
    if not _DIGITS.fullmatch(timestamp) or abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    signed = f"{headers.get('webhook-id', '')}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(expected, part.partition(",")[2]) for part in headers.get("webhook-signature", "").split()
    )
