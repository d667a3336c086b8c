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
from typing import Annotated

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_settings import BaseSettings, NoDecode

from lora_core.env_settings import PREFIXED, CommaSet, read_env
from lora_core.service.queue.limits import OwnerLimits

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
    max_upload_bytes: int = 200 * 2**20  # a user's file (POST /v1/files)
    max_output_bytes: int = 8 * 2**30  # one output file from a worker (a LoRA, a grid): streamed to the store
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
    metrics_token: str | None = None  # GET /metrics asks for it as a bearer token when set (open when not)
    worker_start_timeout_s: float = 300.0
    worker_threads: int | None = None  # torch threads of each local Cog server; None: the machine's cores split evenly
    retention_days: float | None = None  # an ended prediction's input, output files and logs go after this; None: kept

    @classmethod
    def from_env(
        cls, host: str | None = None, port: int | None = None, data_dir: str | Path | None = None
    ) -> ServiceConfig:
        """Settings from the environment (``ServiceEnv``); ``serve`` flags, when given, win over variables."""
        env = read_env(ServiceEnv)
        data = Path(data_dir or env.data_dir or REPO_ROOT / ".data").resolve()
        data.mkdir(parents=True, exist_ok=True)
        host = host or env.host or cls.model_fields["host"].default
        port = next(p for p in (port, env.port, cls.model_fields["port"].default) if p is not None)
        public = env.public_url or f"http://{host if host not in ('0.0.0.0', '::') else '127.0.0.1'}:{port}"
        limits = {k: getattr(env, f"owner_{k}") for k in OwnerLimits.model_fields}
        as_set = {k: getattr(env, k) for k in ServiceEnv.model_fields if k in cls.model_fields and k not in _DERIVED}
        return cls(
            data_dir=data,
            database_url=env.database_url or f"sqlite:///{data / 'lora-studio.db'}",
            storage_url=env.storage_url or f"file://{data / 'files'}",
            s3_endpoint_url=env.s3_endpoint_url,
            host=host,
            port=port,
            public_url=public.rstrip("/"),
            internal_url=(env.internal_url or public).rstrip("/"),
            instance=env.instance or f"{socket.gethostname()}:{port}",
            secret=env.secret or _stored_secret(data),
            worker_token=env.worker_token,
            files_url=env.files_url.rstrip("/") if env.files_url else None,
            owner_limits=OwnerLimits(**{k: v for k, v in limits.items() if v is not None}),
            **{k: v for k, v in as_set.items() if v is not None},
        )

    def worker_setting(self, model: str) -> WorkerSetting:
        return self.workers.get(model, WorkerSetting())

    def threads_per_worker(self, local_workers: int) -> int:
        """Each local Cog server's share of the cores: torch processes that each use every core slow one another
        down by an order of magnitude (a training's step went from 0.25 s to 6.3 s beside one busy process).
        An ``OMP_NUM_THREADS`` the service itself was given (a container's CPU limit, a test process's share of a
        machine running others) bounds the cores shared out, as it would bound torch in this process."""
        if self.worker_threads:
            return self.worker_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS
        given = os.environ.get("OMP_NUM_THREADS", "")
        if given.isdigit() and int(given) > 0:
            cores = min(cores, int(given))
        return max(1, cores // max(1, local_workers))


def parse_workers(text: object) -> object:
    """``"lora-studio/lora=2;lora-studio/lora-training=http://gpu:5000"`` -> settings per model."""
    if not isinstance(text, str):
        return text
    out: dict[str, WorkerSetting] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        model, sep, value = part.partition("=")
        if not sep or "/" not in model:
            raise ValueError(f"expected 'owner/name=N' or 'owner/name=URL,URL', got {part!r}")
        value = value.strip()
        if value.isdigit():
            out[model.strip()] = WorkerSetting(count=int(value))
        else:
            out[model.strip()] = WorkerSetting(count=0, urls=tuple(u.strip().rstrip("/") for u in value.split(",")))
    return out


# Fields whose variables ServiceConfig.from_env combines itself (defaults that depend on other settings).
_DERIVED = {
    *("data_dir", "host", "port", "public_url", "internal_url", "instance", "secret", "worker_token", "files_url"),
    *("database_url", "storage_url", "s3_endpoint_url"),
}


class ServiceEnv(BaseSettings):
    """The variables the service reads, parsed and checked by pydantic-settings: a bad value stops ``serve`` at start
    with the variable's name. ``None`` means not set: ``ServiceConfig``'s defaults are the one truth for values.

    ``LORA_STUDIO_WORKERS``: ``owner/name=N`` (local processes) or ``owner/name=http://gpu1:5000,http://gpu2:5000``,
    separated by ``;``. ``DATABASE_URL``, ``STORAGE_URL`` and ``AWS_ENDPOINT_URL[_S3]`` keep their common names.
    """

    model_config = PREFIXED
    data_dir: Path | None = None
    host: str | None = None
    port: int | None = Field(None, ge=0, le=65535)
    public_url: str | None = None
    internal_url: str | None = None
    files_url: str | None = None
    instance: str | None = None
    secret: str | None = None
    worker_token: str | None = None
    workers: Annotated[dict[str, WorkerSetting], NoDecode, BeforeValidator(parse_workers)] = {}
    allowed_private_hosts: CommaSet = frozenset()
    database_url: str | None = Field(None, validation_alias="DATABASE_URL")
    storage_url: str | None = Field(None, validation_alias="STORAGE_URL")
    s3_endpoint_url: str | None = Field(None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"))
    max_request_bytes: int | None = Field(None, gt=0)
    max_upload_bytes: int | None = Field(None, gt=0)
    max_output_bytes: int | None = Field(None, gt=0)
    webhook_retries: int | None = Field(None, ge=0)
    webhook_backoff_s: float | None = Field(None, ge=0)
    heartbeat_s: float | None = Field(None, gt=0)
    metrics_token: str | None = None
    storage_quota_bytes: int | None = Field(None, ge=0)
    header_timeout_s: float | None = Field(None, gt=0)
    body_timeout_s: float | None = Field(None, gt=0)
    keep_alive_s: float | None = Field(None, ge=0)
    max_connections: int | None = Field(None, gt=0)
    owner_creates_per_minute: int | None = Field(None, ge=0)
    owner_queued: int | None = Field(None, ge=0, validation_alias="LORA_STUDIO_OWNER_MAX_QUEUED")
    owner_running: int | None = Field(None, ge=0, validation_alias="LORA_STUDIO_OWNER_MAX_RUNNING")
    owner_upload_bytes: int | None = Field(None, ge=0)
    worker_threads: int | None = Field(None, ge=1)
    retention_days: float | None = Field(None, gt=0)


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
