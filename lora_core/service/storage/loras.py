"""Named LoRAs: a training with ``destination: "owner/name"`` (the field of Replicate's trainings API) publishes its
LoRA file as the next version of that name, so users say ``alice/face`` or ``alice/face:3`` instead of a URL that
expires in a day or two.

A name is the owner's own or another owner's public one; another owner's private LoRA reads exactly as a missing
one (the same answer, so a name's existence does not leak). A version is the training's LoRA file itself (the file
record keeps its sha256), never a copy. A deleted version loses its file but keeps its row (``removed_at``): its
number is never given again, so a pinned ``owner/name:N`` can stop working but never names other bytes.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from lora_core.service.storage import files
from lora_core.service.storage.db import files as F, loras as L, utcnow
from lora_core.service.storage.file_store import FileStore

Row = dict[str, Any]
_NAME = r"(?P<owner>[a-z0-9][a-z0-9_-]{0,63})/(?P<name>[a-z0-9][a-z0-9._-]{0,63})(?::(?P<version>[1-9][0-9]{0,8}))?"
REF = re.compile(rf"^{_NAME}$")
VISIBILITIES = ("private", "public")
# A1111's ``<lora:NAME:weight>`` whose NAME is a catalog name (``owner/name`` or ``owner/name:N``)
TAG = re.compile(rf"<lora:\s*(?P<ref>{_NAME})\s*:(?P<weight>[^:<>]+)>")


def parse(ref: str) -> tuple[str, str, int | None] | None:
    """(owner, name, version or None for the newest) of ``owner/name[:N]``; None if ``ref`` is not a name."""
    match = REF.match(ref.strip())
    if not match:
        return None
    return match["owner"], match["name"], int(match["version"]) if match["version"] else None


def entries(value: Any) -> list[str]:
    """A ``lora_urls`` value's entries, stripped; none for an empty or missing value."""
    return [e.strip() for e in value.split("|")] if isinstance(value, str) and value.strip() else []


def tag_refs(prompt: Any) -> list[str]:
    """The catalog names that ``<lora:owner/name[:N]:w>`` tags in a prompt use."""
    return [m["ref"] for m in TAG.finditer(prompt)] if isinstance(prompt, str) else []


def tags_as_entries(values: dict[str, Any]) -> dict[str, Any]:
    """A generation's input with each ``<lora:owner/name[:N]:w>`` tag turned into what the predictor reads: the
    name among the ``lora_urls`` entries (appended unless listed) and the tag ``<lora:K:w>`` with its position K,
    which sets its scale. As in A1111, a tag alone is enough to apply a LoRA. A ``lora_scales`` with one value per
    entry gets ``w`` for each appended entry, so the counts still agree; a single value still applies to all."""
    prompt = values.get("prompt")
    if not isinstance(prompt, str) or not tag_refs(prompt):
        return values
    listed = entries(values.get("lora_urls"))
    scales_given = values.get("lora_scales")
    scales = [s.strip() for s in scales_given.split("|")] if isinstance(scales_given, str) else []
    per_entry = len(scales) > 1

    def replace(match: re.Match) -> str:
        ref, weight = match["ref"], match["weight"].strip()
        if ref not in listed:
            listed.append(ref)
            if per_entry:
                scales.append(weight)
        return f"<lora:{listed.index(ref) + 1}:{weight}>"

    out = {**values, "prompt": TAG.sub(replace, prompt), "lora_urls": "|".join(listed)}
    if per_entry:
        out["lora_scales"] = "|".join(scales)
    return out


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
    return sa.and_(L.c.removed_at.is_(None), sa.or_(L.c.owner == viewer, L.c.visibility == "public"))


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
        names = list(c.execute(sa.select(L.c.name).where(L.c.owner == owner, _visible(owner)).distinct()).scalars())
    found = [versions(engine, owner, name, owner) for name in names]
    return sorted(found, key=lambda every: every[0]["created_at"], reverse=True)


def remove(engine: Engine, store: FileStore, owner: str, name: str, version: int) -> bool:
    """The owner's version deleted: its row marked (first, at once: of two processes removing it, one deletes the
    file) and its file removed from the store. False if the owner has no such version (left)."""
    with engine.begin() as c:
        file_id = c.execute(
            L.update()
            .where(L.c.owner == owner, L.c.name == name, L.c.version == version, L.c.removed_at.is_(None))
            .values(removed_at=utcnow())
            .returning(L.c.file_id)
        ).scalar()
    if file_id is None:
        return False
    row = files.get(engine, file_id)
    if row is not None:
        files.delete(engine, store, row)
    return True


def unpublish(connection: sa.Connection, prediction_id: str) -> None:
    """A training's versions marked deleted (its data is being removed; its files go with it)."""
    connection.execute(
        L.update().where(L.c.prediction_id == prediction_id, L.c.removed_at.is_(None)).values(removed_at=utcnow())
    )


def published_trainings() -> sa.Select:
    """The ids of trainings with a version that is not deleted (names do not expire)."""
    return sa.select(L.c.prediction_id).where(L.c.removed_at.is_(None))


def set_visibility(engine: Engine, owner: str, name: str, visibility: str) -> int:
    """Every version of the owner's ``name`` made ``visibility``; how many rows changed (0: no such name)."""
    assert visibility in VISIBILITIES
    with engine.begin() as c:
        return c.execute(L.update().where(L.c.owner == owner, L.c.name == name).values(visibility=visibility)).rowcount
