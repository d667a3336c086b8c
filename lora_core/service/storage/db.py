"""The tables (SQLAlchemy Core), the engine for a ``DATABASE_URL``, and migrating to the newest schema.

SQLite by default, PostgreSQL by URL; one schema for both, changed only through Alembic
migrations (``migrations/``), which ``connect`` applies on start.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False, index=True),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("hint", sa.String(16)),  # the token's first characters, to tell tokens apart in a listing
)

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # "prediction" | "training"
    sa.Column("source", sa.String(16), nullable=False),  # "api" | "web"
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("input", sa.JSON, nullable=False),
    sa.Column("output", sa.JSON),
    sa.Column("error", sa.Text),
    sa.Column("logs", sa.Text, nullable=False, default=""),
    sa.Column("metrics", sa.JSON),
    sa.Column("provenance", sa.JSON),  # a generation's record for exact re-runs (lora_core.provenance)
    sa.Column("data_removed", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("destination", sa.String(200)),  # a training's "owner/name": its LoRA is published there
    sa.Column("webhook", sa.Text),
    sa.Column("webhook_events_filter", sa.JSON),
    sa.Column("forked_from", sa.String(32)),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("started_at", sa.DateTime),
    sa.Column("completed_at", sa.DateTime),
    # the queue: a worker's name once claimed, by which service instance; cancel asked for while it runs
    sa.Column("worker", sa.String(128)),
    sa.Column("instance", sa.String(128)),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("claimed_at", sa.DateTime),  # when a worker took it: the owner's last turn, for fair claims
    sa.Index("ix_predictions_owner_created", "owner", "created_at", "id"),
    sa.Index("ix_predictions_queue", "status", "model", "created_at"),
    sa.Index("ix_predictions_owner_turns", "model", "owner", "claimed_at"),
)

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False, index=True),
    sa.Column("prediction_id", sa.String(32), index=True),  # set for outputs
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("content_type", sa.String(128), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("md5", sa.String(32), nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("storage_key", sa.String(512), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("prediction_id", sa.String(32), nullable=False, index=True),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # "pending" | "delivered" | "failed"
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("completed_at", sa.DateTime),
    sa.Column("body", sa.Text),  # the event's JSON, as it was when it happened
    sa.Column("seq", sa.BigInteger),  # order among the prediction's deliveries
    sa.Column("next_attempt_at", sa.DateTime),  # pending: not before then
    sa.Column("claimed_by", sa.String(128)),  # the process posting it now, until claimed_until
    sa.Column("claimed_until", sa.DateTime),
    sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
)

loras = sa.Table(  # named LoRAs: each training with a destination adds a version (storage/loras.py)
    "loras",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("file_id", sa.String(40), nullable=False),
    sa.Column("prediction_id", sa.String(32), nullable=False),
    sa.Column("visibility", sa.String(16), nullable=False),  # "private" | "public"
    sa.Column("created_at", sa.DateTime, nullable=False),
    # set when its owner deleted it (or its training's data): the row stays so that its number is never given again
    sa.Column("removed_at", sa.DateTime),
    sa.UniqueConstraint("owner", "name", "version", name="uq_loras_owner_name_version"),
)

instances = sa.Table(
    "instances",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("heartbeat_at", sa.DateTime, nullable=False),
)

MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> datetime.datetime:
    """Naive UTC with microseconds: what both SQLite and PostgreSQL store alike."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def row_by_id(engine: Engine, table: sa.Table, row_id: str, owner: str | None = None) -> dict | None:
    """One row as a dict, or None; with ``owner``, only if it is theirs (another owner's id reads as missing)."""
    query = sa.select(table).where(table.c.id == row_id)
    if owner is not None:
        query = query.where(table.c.owner == owner)
    with engine.connect() as c:
        found = c.execute(query).mappings().first()
    return dict(found) if found else None


def make_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def migrate(engine: Engine) -> None:
    """Bring the database to the newest schema (Alembic ``upgrade head``)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # replicas starting together: one migrates, the others wait
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(7306185411)"))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def connect(url: str) -> Engine:
    engine = make_engine(url)
    migrate(engine)
    return engine
