"""API tokens: created once and shown once, stored only as SHA-256, resolved to their owner per request."""

from __future__ import annotations

import hashlib
import re
import secrets

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .db import tokens, utcnow

OWNER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PREFIX = "ls_"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(engine: Engine, owner: str) -> str:
    """A new token for ``owner`` (lowercase letters, digits, ``-`` and ``_``); only its hash is kept."""
    if not OWNER.match(owner):
        raise ValueError(f"owner {owner!r}: use 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit")
    token = PREFIX + secrets.token_urlsafe(30)
    with engine.begin() as c:
        c.execute(tokens.insert().values(id=secrets.token_hex(8), owner=owner, token_sha256=_digest(token),
                                         created_at=utcnow()))
    return token


def owner_of(engine: Engine, token: str) -> str | None:
    if not token or len(token) > 200:
        return None
    with engine.connect() as c:
        return c.execute(sa.select(tokens.c.owner).where(tokens.c.token_sha256 == _digest(token))).scalar()
