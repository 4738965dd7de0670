"""Presenter affinity: each job names its presenter (tenant, portrait, prompt, size,
precision) so that a worker holding that presenter's encodings can prefer it in the claim.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Jobs submitted before have none (their portrait's digest was not kept): no affinity.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("presenter_key", sa.String(64), nullable=True))
    op.create_index(
        "ix_jobs_presenter",
        "jobs",
        ["status", "presenter_key", sa.literal_column("priority DESC"), "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_presenter", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("presenter_key")
