"""loras.removed_at: a deleted version keeps its row, so that ``owner/name:N`` never names other bytes later

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("loras") as batch:
        batch.add_column(sa.Column("removed_at", sa.DateTime))


def downgrade() -> None:
    with op.batch_alter_table("loras") as batch:
        batch.drop_column("removed_at")
