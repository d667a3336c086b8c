"""provenance: what a generation used (seed drawn, LoRA files by sha256, base hash, versions), for exact re-runs;
data_removed: a prediction whose input, output and logs were deleted (by its owner or the retention setting);
destination and loras: a training's LoRA published under a name, a version each time

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
        batch.add_column(sa.Column("data_removed", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("destination", sa.String(200)))
    op.create_table(
        "loras",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("file_id", sa.String(40), nullable=False),
        sa.Column("prediction_id", sa.String(32), nullable=False),
        sa.Column("visibility", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("owner", "name", "version", name="uq_loras_owner_name_version"),
    )


def downgrade() -> None:
    op.drop_table("loras")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("destination")
        batch.drop_column("data_removed")
        batch.drop_column("provenance")
