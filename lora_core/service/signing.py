"""Every HMAC the service makes, each from the one service secret with its own purpose label.

- file URLs: ``?expires=…&sig=…``, valid until ``expires``; ``expires`` is rounded to a window so
  the same file gets the same URL for a while (a worker's LoRA cache is keyed by URL);
- worker credentials: the bearer token workers send with webhooks and uploads;
- user webhooks: Standard Webhooks signatures (``webhook-id``/``-timestamp``/``-signature``), as Replicate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time


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
        if not expires or not sig or not expires.isdigit():
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
        return bool(token) and hmac.compare_digest(self.worker_token(), token)

    # ---- user webhooks (Standard Webhooks, as Replicate) ------------------------
    def webhook_secret(self) -> str:
        return "whsec_" + base64.b64encode(self._mac("webhook", "secret")[:24]).decode()

    def webhook_headers(self, message_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        timestamp = int(time.time()) if timestamp is None else timestamp
        key = base64.b64decode(self.webhook_secret().removeprefix("whsec_"))
        signed = f"{message_id}.{timestamp}.".encode() + body
        signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        return {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": f"v1,{signature}"}


def verify_webhook(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """What a receiver runs (Replicate's documented check); used by the tests and the docs' example."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    timestamp = headers.get("webhook-timestamp", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    signed = f"{headers.get('webhook-id', '')}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, part.partition(",")[2])
               for part in headers.get("webhook-signature", "").split())
