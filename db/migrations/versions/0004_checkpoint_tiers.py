"""Checkpoint tiers: where a job's newest checkpoints are (the node's disk, the bucket), the
node a requeued job is offered to first and until when, and wake-ups that wait until a time.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("local_checkpoint_clip", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("local_checkpoint_node", sa.String(255), nullable=True))
        batch.add_column(sa.Column("remote_checkpoint_clip", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("preferred_until", UTC, nullable=True))
    # Before this revision every checkpoint went to the bucket.
    op.execute("UPDATE jobs SET remote_checkpoint_clip = last_checkpoint_clip")
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("available_at", UTC, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("available_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("preferred_until")
        batch.drop_column("remote_checkpoint_clip")
        batch.drop_column("local_checkpoint_node")
        batch.drop_column("local_checkpoint_clip")
