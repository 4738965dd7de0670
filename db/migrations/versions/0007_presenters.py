"""Presenters: a tenant's named portrait, prompt and size, which jobs name instead of sending
them; and the presenter a job was submitted with.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "presenters",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("upload_id", sa.String(40), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("size", sa.String(16), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["upload_id"],
            ["uploads.id"],
            name=op.f("fk_presenters_upload_id_uploads"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_presenters")),
        sa.UniqueConstraint("tenant", "name", name=op.f("uq_presenters_tenant_name")),
    )
    op.create_index("ix_presenters_upload", "presenters", ["upload_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("presenter", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("presenter")
    op.drop_index("ix_presenters_upload", table_name="presenters")
    op.drop_table("presenters")
