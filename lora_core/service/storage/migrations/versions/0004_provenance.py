"""provenance: what a generation used (seed drawn, LoRA files by sha256, base hash, versions), for exact re-runs

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("provenance", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("provenance")
