"""Failed attempts counted apart from leases taken; failures described for owners and for
operators; the job's precision, which the claim filters on.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("failed_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("error_kind", sa.String(16), nullable=True))
        batch.add_column(sa.Column("error_detail", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("precision", sa.String(8), nullable=False, server_default="bf16")
        )
        batch.create_check_constraint(op.f("ck_jobs_failed_attempts"), "failed_attempts >= 0")
    # Before this revision every lease counted against max_attempts: keep that for old rows.
    op.execute("UPDATE jobs SET failed_attempts = attempt")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_failed_attempts"), type_="check")
        batch.drop_column("precision")
        batch.drop_column("error_detail")
        batch.drop_column("error_kind")
        batch.drop_column("failed_attempts")
