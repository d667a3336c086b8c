"""Alembic environment: runs on the connection ``db.migrate`` passes in (or on ``sqlalchemy.url``)."""

from alembic import context

from lora_core.service.storage.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    import sqlalchemy as sa

    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("alembic: no connection given and no sqlalchemy.url set")
    engine = sa.create_engine(url)
    connection = engine.connect()
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
