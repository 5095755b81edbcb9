"""Count answers on each item, so the queue finds open items through an index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("answers", sa.Integer, nullable=False, server_default="0"))
    op.execute("UPDATE items SET answers = (SELECT count(*) FROM submissions WHERE submissions.item_id = items.id)")
    op.create_index("ix_items_open", "items", ["project_id", "answers", "id"])


def downgrade() -> None:
    op.drop_index("ix_items_open", table_name="items")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("answers")
