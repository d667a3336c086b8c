"""Named LoRAs: a training with ``destination: "owner/name"`` (the field of Replicate's trainings API) publishes its
LoRA file as the next version of that name, so users say ``alice/face`` or ``alice/face:3`` instead of a URL that
expires in a day or two.

A name is the owner's own or another owner's public one; another owner's private LoRA reads exactly as a missing
one (the same answer, so a name's existence does not leak). A version is the training's LoRA file itself (the file
record keeps its sha256), never a copy.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from lora_core.service.storage.db import files as F, loras as L, utcnow

Row = dict[str, Any]
REF = re.compile(
    r"^(?P<owner>[a-z0-9][a-z0-9_-]{0,63})/(?P<name>[a-z0-9][a-z0-9._-]{0,63})(?::(?P<version>[1-9][0-9]{0,8}))?$"
)
VISIBILITIES = ("private", "public")


def parse(ref: str) -> tuple[str, str, int | None] | None:
    """(owner, name, version or None for the newest) of ``owner/name[:N]``; None if ``ref`` is not a name."""
    match = REF.match(ref.strip())
    if not match:
        return None
    return match["owner"], match["name"], int(match["version"]) if match["version"] else None


def publish(engine: Engine, owner: str, name: str, file_id: str, prediction_id: str) -> Row:
    """The file as ``owner/name``'s next version (private, unless the name was made public)."""
    for _ in range(5):  # two trainings of one name ending at once: one of them takes the next number again
        with engine.connect() as c:
            latest = c.execute(
                sa.select(L.c.version, L.c.visibility)
                .where(L.c.owner == owner, L.c.name == name)
                .order_by(L.c.version.desc())
                .limit(1)
            ).first()
        row = {
            "id": secrets.token_hex(16),
            "owner": owner,
            "name": name,
            "version": (latest.version if latest else 0) + 1,
            "file_id": file_id,
            "prediction_id": prediction_id,
            "visibility": latest.visibility if latest else "private",
            "created_at": utcnow(),
        }
        try:
            with engine.begin() as c:
                c.execute(L.insert().values(**row))
            return row
        except IntegrityError:
            continue
    raise RuntimeError(f"could not publish {owner}/{name}: its versions kept changing")


def _visible(viewer: str):
    return sa.or_(L.c.owner == viewer, L.c.visibility == "public")


def resolve(engine: Engine, ref: str, viewer: str) -> Row | None:
    """The version ``ref`` names with its file's record (``file``), if ``viewer`` may use it; else None."""
    parsed = parse(ref)
    if parsed is None:
        return None
    owner, name, version = parsed
    query = sa.select(L, F.c.sha256, F.c.size).join(F, F.c.id == L.c.file_id)
    query = query.where(L.c.owner == owner, L.c.name == name, _visible(viewer))
    query = query.where(L.c.version == version) if version else query.order_by(L.c.version.desc()).limit(1)
    with engine.connect() as c:
        found = c.execute(query).mappings().first()
    return dict(found) if found else None


def by_sha256(engine: Engine, sha256: str, viewer: str) -> Row | None:
    """The newest version ``viewer`` may use whose file has these bytes."""
    query = sa.select(L).join(F, F.c.id == L.c.file_id).where(F.c.sha256 == sha256, _visible(viewer))
    with engine.connect() as c:
        found = c.execute(query.order_by(L.c.created_at.desc()).limit(1)).mappings().first()
    return dict(found) if found else None


def versions(engine: Engine, owner: str, name: str, viewer: str) -> list[Row]:
    """Every version of ``owner/name`` (newest first) with its file's sha256 and size; [] if none is visible."""
    query = sa.select(L, F.c.sha256, F.c.size, F.c.metadata, F.c.name.label("file_name")).join(F, F.c.id == L.c.file_id)
    query = query.where(L.c.owner == owner, L.c.name == name, _visible(viewer)).order_by(L.c.version.desc())
    with engine.connect() as c:
        return [dict(r) for r in c.execute(query).mappings()]


def of_owner(engine: Engine, owner: str) -> list[list[Row]]:
    """The owner's names, each as its versions (newest first), the most recently published name first."""
    with engine.connect() as c:
        names = list(c.execute(sa.select(L.c.name).where(L.c.owner == owner).distinct()).scalars())
    found = [versions(engine, owner, name, owner) for name in names]
    return sorted(found, key=lambda every: every[0]["created_at"], reverse=True)


def set_visibility(engine: Engine, owner: str, name: str, visibility: str) -> int:
    """Every version of the owner's ``name`` made ``visibility``; how many rows changed (0: no such name)."""
    assert visibility in VISIBILITIES
    with engine.begin() as c:
        return c.execute(L.update().where(L.c.owner == owner, L.c.name == name).values(visibility=visibility)).rowcount
