"""Per-owner limits, so that one owner cannot take the service from the others: how fast they create predictions,
how many wait in the queue, how many bytes their uploads keep. (How many run at once is enforced where workers
claim: ``predictions.claim_next``.)

Counted in the database, so every service process sees the same figures. A check and the insert that follows are
not one transaction: two requests racing at the limit may both pass, overshooting it by at most the number of
requests in flight, which is fine for a guard against floods.
"""

from __future__ import annotations

import datetime
import math

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

from lora_core.service.storage.db import files as F, predictions as P, utcnow

WINDOW_S = 60


class OwnerLimits(BaseModel):
    """0 means no limit."""

    model_config = ConfigDict(frozen=True)
    creates_per_minute: int = Field(600, ge=0)  # Replicate's documented limit for creating predictions
    queued: int = Field(100, ge=0)
    running: int = Field(4, ge=0)
    upload_bytes: int = Field(10 * 2**30, ge=0)


class LimitReached(Exception):
    """A 429 (or 507 for stored bytes): ``detail`` for a person, ``retry_after_s`` when waiting helps."""

    def __init__(self, detail: str, retry_after_s: int | None = None, status: int = 429) -> None:
        super().__init__(detail)
        self.detail, self.retry_after_s, self.status = detail, retry_after_s, status


def check_create(engine: Engine, owner: str, limits: OwnerLimits) -> None:
    """Before a new prediction of ``owner`` is queued."""
    if not (limits.creates_per_minute or limits.queued):
        return
    since = utcnow() - datetime.timedelta(seconds=WINDOW_S)
    recent = P.c.created_at >= since
    waiting = sa.and_(P.c.status == "starting", P.c.worker.is_(None))
    with engine.connect() as c:
        row = c.execute(
            sa.select(
                sa.func.count().filter(recent),
                sa.func.min(P.c.created_at).filter(recent),
                sa.func.count().filter(waiting),
            ).where(P.c.owner == owner, sa.or_(recent, waiting))
        ).one()
    created, oldest, queued = row
    if limits.creates_per_minute and created >= limits.creates_per_minute:
        retry = max(1, math.ceil(WINDOW_S - (utcnow() - oldest).total_seconds()))
        raise LimitReached(
            f"You created {created} predictions in the last minute, the most allowed per owner; "
            f"try again in {retry} s.",
            retry,
        )
    if limits.queued and queued >= limits.queued:
        raise LimitReached(
            f"You have {queued} predictions waiting in the queue, the most allowed per owner; "
            "wait for some to start (or cancel some) and try again.",
            10,
        )


def upload_room(engine: Engine, owner: str, limits: OwnerLimits) -> int | None:
    """Bytes ``owner`` may still upload (None: no limit); ``LimitReached`` if none."""
    if not limits.upload_bytes:
        return None
    with engine.connect() as c:
        used = c.execute(
            sa.select(sa.func.coalesce(sa.func.sum(F.c.size), 0)).where(F.c.owner == owner, F.c.prediction_id.is_(None))
        ).scalar()
    used = int(used or 0)
    room = limits.upload_bytes - used
    if room <= 0:
        raise LimitReached(
            f"Your uploads take {used / 2**20:.0f} MB, the most kept per owner "
            f"({limits.upload_bytes / 2**20:.0f} MB): delete some with DELETE /v1/files/{{id}}.",
            status=507,
        )
    return room
