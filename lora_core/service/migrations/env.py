"""Alembic environment: runs on the connection ``db.migrate`` passes in (or on ``sqlalchemy.url``)."""

from alembic import context

from lora_core.service.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    import sqlalchemy as sa

    engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"))
    connection = engine.connect()
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
