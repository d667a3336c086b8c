"""The service's settings, read once from the environment (and ``serve`` flags) into one typed object.

Defaults make one machine work with nothing set: SQLite and files under ``data_dir``, one
local Cog worker per model. A deployment sets ``DATABASE_URL`` (PostgreSQL), ``STORAGE_URL``
(``s3://bucket/prefix``) and ``LORA_STUDIO_WORKERS`` (the GPU containers' URLs).
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .limits import OwnerLimits

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


class WorkerSetting(BaseModel):
    """Where a model's predictions run: ``count`` local Cog servers, or Cog servers at ``urls``."""

    model_config = ConfigDict(frozen=True)
    count: int = Field(1, ge=0, le=16)
    urls: tuple[str, ...] = ()


class ServiceConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    data_dir: Path
    database_url: str
    storage_url: str
    s3_endpoint_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str  # how clients reach the API; the base of every URL it returns
    files_url: str | None = None  # a separate origin for file bytes (production): uploads never share the pages' origin
    internal_url: str  # how workers reach the service (webhooks, uploads, input files)
    instance: str  # this process's name in the shared queue; restarted under the same name it fails its own leftovers
    secret: str  # signs file URLs, worker traffic and user webhooks (``whsec_``); kept in data_dir if not given
    worker_token: str | None = None  # what workers send back (WEBHOOK_AUTH_TOKEN); derived from secret if None
    workers: dict[str, WorkerSetting] = {}  # "owner/name" -> setting; models not named get one local worker
    allowed_private_hosts: frozenset[str] = frozenset()  # webhook / input URL hosts allowed despite being private
    max_request_bytes: int = 2**20  # JSON bodies; files go through POST /v1/files
    max_upload_bytes: int = 200 * 2**20
    owner_limits: OwnerLimits = OwnerLimits()
    header_timeout_s: float = 10.0  # a request's headers must all arrive within this
    body_timeout_s: float = 30.0  # a body with no new bytes for this long is answered 408
    keep_alive_s: float = 5.0
    max_connections: int = 1000  # open connections before new requests get 503
    storage_quota_bytes: int = 0  # local file store only: at most this many bytes of files (0: the disk's size)
    file_url_window_s: int = 24 * 3600  # signed file URLs stay valid 1-2 windows and are stable within one
    webhook_retries: int = 6
    webhook_backoff_s: float = 1.0
    heartbeat_s: float = 5.0
    worker_start_timeout_s: float = 300.0

    @classmethod
    def from_env(
        cls,
        host: str | None = None,
        port: int | None = None,
        data_dir: str | Path | None = None,
        env: dict[str, str] | None = None,
    ) -> ServiceConfig:
        """Settings from ``LORA_STUDIO_*``, ``DATABASE_URL``, ``STORAGE_URL`` and ``AWS_ENDPOINT_URL``.

        ``LORA_STUDIO_WORKERS``: ``owner/name=N`` (local processes) or ``owner/name=http://gpu1:5000,http://gpu2:5000``,
        separated by ``;``.
        """
        env = dict(os.environ if env is None else env)
        data = Path(data_dir or env.get("LORA_STUDIO_DATA_DIR") or REPO_ROOT / ".data").resolve()
        data.mkdir(parents=True, exist_ok=True)
        host = host or env.get("LORA_STUDIO_HOST", "127.0.0.1")
        port = int(port if port is not None else env.get("LORA_STUDIO_PORT", 8000))
        public = (
            env.get("LORA_STUDIO_PUBLIC_URL")
            or f"http://{host if host not in ('0.0.0.0', '::') else '127.0.0.1'}:{port}"
        )
        return cls(
            data_dir=data,
            database_url=env.get("DATABASE_URL") or f"sqlite:///{data / 'lora-studio.db'}",
            storage_url=env.get("STORAGE_URL") or f"file://{data / 'files'}",
            s3_endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
            host=host,
            port=port,
            public_url=public.rstrip("/"),
            internal_url=(env.get("LORA_STUDIO_INTERNAL_URL") or public).rstrip("/"),
            instance=env.get("LORA_STUDIO_INSTANCE") or f"{socket.gethostname()}:{port}",
            secret=env.get("LORA_STUDIO_SECRET") or _stored_secret(data),
            worker_token=env.get("LORA_STUDIO_WORKER_TOKEN") or None,
            workers=parse_workers(env.get("LORA_STUDIO_WORKERS", "")),
            allowed_private_hosts=frozenset(
                h.strip() for h in env.get("LORA_STUDIO_ALLOWED_PRIVATE_HOSTS", "").split(",") if h.strip()
            ),
            files_url=(env.get("LORA_STUDIO_FILES_URL") or "").rstrip("/") or None,
            owner_limits=OwnerLimits(**{k: int(env[v]) for k, v in _OWNER_LIMITS.items() if v in env}),
            **{k: type(cls.model_fields[k].default)(env[v]) for k, v in _NUMBERS.items() if v in env},
        )

    def worker_setting(self, model: str) -> WorkerSetting:
        return self.workers.get(model, WorkerSetting())


_NUMBERS = {
    "max_request_bytes": "LORA_STUDIO_MAX_REQUEST_BYTES",
    "max_upload_bytes": "LORA_STUDIO_MAX_UPLOAD_BYTES",
    "webhook_retries": "LORA_STUDIO_WEBHOOK_RETRIES",
    "webhook_backoff_s": "LORA_STUDIO_WEBHOOK_BACKOFF_S",
    "heartbeat_s": "LORA_STUDIO_HEARTBEAT_S",
    "storage_quota_bytes": "LORA_STUDIO_STORAGE_QUOTA_BYTES",
    "header_timeout_s": "LORA_STUDIO_HEADER_TIMEOUT_S",
    "body_timeout_s": "LORA_STUDIO_BODY_TIMEOUT_S",
    "keep_alive_s": "LORA_STUDIO_KEEP_ALIVE_S",
    "max_connections": "LORA_STUDIO_MAX_CONNECTIONS",
}
_OWNER_LIMITS = {
    "creates_per_minute": "LORA_STUDIO_OWNER_CREATES_PER_MINUTE",
    "queued": "LORA_STUDIO_OWNER_MAX_QUEUED",
    "running": "LORA_STUDIO_OWNER_MAX_RUNNING",
    "upload_bytes": "LORA_STUDIO_OWNER_UPLOAD_BYTES",
}


def parse_workers(text: str) -> dict[str, WorkerSetting]:
    """``"lora-studio/lora=2;lora-studio/lora-training=http://gpu:5000"`` -> settings per model."""
    out: dict[str, WorkerSetting] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        model, sep, value = part.partition("=")
        if not sep or "/" not in model:
            raise ValueError(f"LORA_STUDIO_WORKERS: expected 'owner/name=N' or 'owner/name=URL,URL', got {part!r}")
        value = value.strip()
        if value.isdigit():
            out[model.strip()] = WorkerSetting(count=int(value))
        else:
            out[model.strip()] = WorkerSetting(count=0, urls=tuple(u.strip().rstrip("/") for u in value.split(",")))
    return out


def _stored_secret(data_dir: Path) -> str:
    """A random secret created on first start and kept (0600) in the data directory."""
    path = data_dir / "secret"
    if not path.exists():
        tmp = data_dir / f".secret.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        try:
            os.link(tmp, path)  # atomic: of two processes starting at once, one secret wins
        except FileExistsError:
            pass
        os.unlink(tmp)
    return path.read_text().strip()
