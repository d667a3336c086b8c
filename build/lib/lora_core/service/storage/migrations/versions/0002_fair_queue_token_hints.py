"""fair queue and token hints: predictions.claimed_at (whose turn it is), tokens.hint (to tell tokens apart)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("claimed_at", sa.DateTime))
    op.create_index("ix_predictions_owner_turns", "predictions", ["model", "owner", "claimed_at"])
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("hint", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("hint")
    op.drop_index("ix_predictions_owner_turns", "predictions")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("claimed_at")
