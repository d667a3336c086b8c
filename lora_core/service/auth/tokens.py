"""API tokens: created once and shown once, stored only as SHA-256 (and their first characters, to tell them apart),
resolved to their owner on every request, revoked by deleting their row (so at once, on every process)."""

from __future__ import annotations

import hashlib
import re
import secrets

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lora_core.service.storage.db import tokens, utcnow

OWNER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PREFIX = "ls_"
TOKEN_COOKIE = "lora_studio_token"  # the pages' sign-in: HttpOnly, SameSite=Strict, set by POST /session
PAGE_HEADER = "x-lora-studio-page"  # sent by the pages' script: no other site's page can send it (no CORS here)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(engine: Engine, owner: str) -> str:
    """A new token for ``owner`` (lowercase letters, digits, ``-`` and ``_``); only its hash is kept."""
    return issue(engine, owner)["token"]


def issue(engine: Engine, owner: str) -> dict:
    """``create``, with the row a listing shows (id, owner, created_at, hint) beside the token."""
    if not OWNER.match(owner):
        raise ValueError(
            f"owner {owner!r}: use 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
        )
    token = PREFIX + secrets.token_urlsafe(30)
    row = {"id": secrets.token_hex(8), "owner": owner, "created_at": utcnow(), "hint": token[:HINT]}
    with engine.begin() as c:
        c.execute(tokens.insert().values(**row, token_sha256=_digest(token)))
    return {**row, "token": token}


HINT = 7  # "ls_" and 4 random characters: enough to recognise a token, far too few to guess one


def listing(engine: Engine, owner: str | None = None) -> list[dict]:
    """Every token (or ``owner``'s): id, owner, created_at, hint; never the token."""
    query = sa.select(tokens.c.id, tokens.c.owner, tokens.c.created_at, tokens.c.hint).order_by(tokens.c.created_at)
    if owner:
        query = query.where(tokens.c.owner == owner)
    with engine.connect() as c:
        return [dict(r) for r in c.execute(query).mappings()]


def revoke(engine: Engine, *, token_id: str | None = None, token: str | None = None, owner: str | None = None) -> int:
    """Deletes the token with this id, this token, or every token of ``owner``; how many went."""
    if sum(x is not None for x in (token_id, token, owner)) != 1:
        raise ValueError("name exactly one of: a token id, a token, an owner")
    where = (
        tokens.c.id == token_id
        if token_id is not None
        else tokens.c.token_sha256 == _digest(token)
        if token is not None
        else tokens.c.owner == owner
    )
    with engine.begin() as c:
        return c.execute(tokens.delete().where(where)).rowcount


def revoke_own(engine: Engine, owner: str, token_id: str) -> bool:
    """Deletes ``owner``'s token with this id (another owner's reads as missing); whether one went."""
    with engine.begin() as c:
        return bool(c.execute(tokens.delete().where(tokens.c.id == token_id, tokens.c.owner == owner)).rowcount)


def _field_of(engine: Engine, token: str, column: sa.Column) -> str | None:
    """``column`` of this token's row; None for no such token (or no token, or one far too long to be one)."""
    if not token or len(token) > 200:
        return None
    with engine.connect() as c:
        return c.execute(sa.select(column).where(tokens.c.token_sha256 == _digest(token))).scalar()


def id_of(engine: Engine, token: str) -> str | None:
    """The id of this token (the tokens page marks the one its browser signed in with)."""
    return _field_of(engine, token, tokens.c.id)


def owner_of(engine: Engine, token: str) -> str | None:
    return _field_of(engine, token, tokens.c.owner)
