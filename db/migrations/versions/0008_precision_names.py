"""Precision names up to 32 characters ("fp8-attention" did not fit the first column's 8).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column(
            "precision",
            existing_type=sa.String(8),
            type_=sa.String(32),
            existing_nullable=False,
            existing_server_default="bf16",
        )


def downgrade() -> None:
    # a job of a longer precision name would not fit: refuse rather than lose it
    longer = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM jobs WHERE length(precision) > 8"))
        .scalar_one()
    )
    if longer:
        raise RuntimeError(
            f"{longer} jobs have a precision name longer than 8 characters "
            "(fp8-attention): finish or delete them before downgrading"
        )
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column(
            "precision",
            existing_type=sa.String(32),
            type_=sa.String(8),
            existing_nullable=False,
            existing_server_default="bf16",
        )
