"""File records: uploads (``POST /v1/files``) and prediction outputs, their bytes in the ``FileStore``.

A file is stored once under a random key, hashed while it streams in, capped in size,
and described for the pages (a ``.safetensors`` file's metadata header: base, task, tokens).
Its URL is signed with an expiry (``signing``), or fetched with the owner's token.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import re
import secrets
from pathlib import PurePosixPath
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lora_core.service.storage import content_types
from lora_core.service.storage.db import files as F, row_by_id, utcnow
from lora_core.service.storage.file_store import FileStore, Readable, StorageFull

Row = dict[str, Any]
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class TooLarge(ValueError):
    pass


class _Counting:
    """Reads through ``stream`` hashing and counting, and stops past ``limit`` bytes."""

    def __init__(self, stream: Readable, limit: int) -> None:
        self.stream, self.limit = stream, limit
        self.size, self.sha256, self.md5 = 0, hashlib.sha256(), hashlib.md5()
        self.head = b""

    def read(self, n: int = -1) -> bytes:
        chunk = self.stream.read(n)
        self.size += len(chunk)
        if self.size > self.limit:
            raise TooLarge(f"the file is larger than the {self.limit / 2**20:.0f} MB limit")
        self.sha256.update(chunk)
        self.md5.update(chunk)
        if len(self.head) < 1 << 20:
            self.head += chunk[: (1 << 20) - len(self.head)]
        return chunk


def safe_name(name: str) -> str:
    """A file name that is only a name: no folders, no odd characters, not empty."""
    base = PurePosixPath(name.replace("\\", "/")).name
    cleaned = SAFE_NAME.sub("_", base).strip("._") or "file"
    return cleaned[:120]


class _Prefixed:
    """``head`` (already read from ``rest``), then the rest of ``rest``: a stream that was peeked at."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self.head, self.rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.rest.read(n)
        if n < 0:
            out, self.head = self.head + self.rest.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out


def save(
    engine: Engine,
    store: FileStore,
    *,
    owner: str,
    name: str,
    stream: Readable,
    limit: int,
    content_type: str | None = None,
    prediction_id: str | None = None,
) -> Row:
    """Store the bytes, then the record. ``TooLarge`` / ``StorageFull`` leave nothing behind. The stored content type
    is the declared one only if it is safe and true (``content_types.stored_type``)."""
    name = safe_name(name)
    head = stream.read(64)
    content_type = content_types.stored_type(content_type or mimetypes.guess_type(name)[0], head)
    file_id = secrets.token_hex(16)
    key = f"{owner}/{file_id}/{name}"
    counting = _Counting(_Prefixed(head, stream), limit)
    try:
        store.put(key, counting, content_type)
    except (TooLarge, StorageFull):
        store.delete(key)
        raise
    row = dict(
        id=file_id,
        owner=owner,
        prediction_id=prediction_id,
        name=name,
        content_type=content_type,
        size=counting.size,
        sha256=counting.sha256.hexdigest(),
        md5=counting.md5.hexdigest(),
        metadata=describe(name, counting.head),
        storage_key=key,
        created_at=utcnow(),
    )
    with engine.begin() as c:
        c.execute(F.insert().values(**row))
    return row


def describe(name: str, head: bytes) -> dict:
    """What a page shows about a file without opening it: for ``.safetensors``, its metadata."""
    if not name.endswith(".safetensors") or len(head) < 8:
        return {}
    size = int.from_bytes(head[:8], "little")
    if size > len(head) - 8:
        return {}
    try:
        meta = json.loads(head[8 : 8 + size]).get("__metadata__") or {}
    except (ValueError, AttributeError):
        return {}
    keep = (
        "lora_studio.base_model",
        "lora_studio.task",
        "lora_studio.tokens",
        "lora_studio.rank",
        "lora_studio.steps",
        "lora_studio.seed",
        "lora_studio.checkpoint",  # a training's checkpoint: its place and scores (training/checkpoint_report.py)
        "lora_studio.fidelity",
        "lora_studio.bleed",
        "lora_studio.bleed_bound",
        "lora_studio.recommended",
        "modelspec.trigger_phrase",
        "ss_base_model_version",
    )
    return {k: str(v)[:500] for k, v in meta.items() if k in keep}


def get(engine: Engine, file_id: str, owner: str | None = None) -> Row | None:
    return row_by_id(engine, F, file_id, owner)


def by_sha256(engine: Engine, owner: str, sha256: str) -> Row | None:
    """The owner's newest file with these bytes (an upload or an output), if any."""
    with engine.connect() as c:
        row = (
            c.execute(
                sa.select(F).where(F.c.owner == owner, F.c.sha256 == sha256).order_by(F.c.created_at.desc()).limit(1)
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


def of_prediction(engine: Engine, prediction_id: str) -> list[Row]:
    with engine.connect() as c:
        return [
            dict(r)
            for r in c.execute(
                sa.select(F).where(F.c.prediction_id == prediction_id).order_by(F.c.created_at)
            ).mappings()
        ]


def list_uploads(engine: Engine, owner: str, limit: int = 100) -> list[Row]:
    with engine.connect() as c:
        return [
            dict(r)
            for r in c.execute(
                sa.select(F)
                .where(F.c.owner == owner, F.c.prediction_id.is_(None))
                .order_by(F.c.created_at.desc())
                .limit(limit)
            ).mappings()
        ]


def delete(engine: Engine, store: FileStore, row: Row) -> None:
    store.delete(row["storage_key"])
    with engine.begin() as c:
        c.execute(F.delete().where(F.c.id == row["id"]))
