"""durable webhooks: a delivery keeps its event's JSON, its place in order and its schedule, so any process sends it

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("body", sa.Text))
        batch.add_column(sa.Column("seq", sa.BigInteger))
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime))
        batch.add_column(sa.Column("claimed_by", sa.String(128)))
        batch.add_column(sa.Column("claimed_until", sa.DateTime))
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"])
    # Deliveries left pending by a version that kept them in memory have no body to send: say so.
    op.execute(
        "UPDATE webhook_deliveries SET status = 'failed', completed_at = created_at, "
        "last_error = 'not sent: the service was upgraded while this delivery waited' WHERE status = 'pending'"
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_due", "webhook_deliveries")
    with op.batch_alter_table("webhook_deliveries") as batch:
        for column in ("claimed_until", "claimed_by", "next_attempt_at", "seq", "body"):
            batch.drop_column(column)
