"""The chat loop: policies the app serves, chats and their turns, trainer groups, chat-project
settings, and the times the watch report reads (claim start, seconds per answer).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("group_name", sa.String(64), nullable=True))
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("settings", sa.JSON, nullable=True))
    with op.batch_alter_table("claims") as batch:
        batch.add_column(sa.Column("claimed_at", sa.DateTime, nullable=True))
    with op.batch_alter_table("submissions") as batch:
        batch.add_column(sa.Column("seconds", sa.Float, nullable=True))
    op.create_table(
        "policies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", sa.String(1000), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("round", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "chats",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("policy_id", sa.Integer, sa.ForeignKey("policies.id", ondelete="SET NULL"), nullable=True),
        sa.Column("round", sa.Integer, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("pending_suggestion", sa.Text, nullable=True),
        sa.Column("rank_item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="SET NULL"), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_chats_project_id", "chats", ["project_id"])
    op.create_index("ix_chats_user_id", "chats", ["user_id"])
    op.create_table(
        "turns",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("chat_id", sa.Integer, sa.ForeignKey("chats.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("by_model", sa.Boolean, nullable=False),
        sa.Column("suggestion", sa.Text, nullable=True),
        sa.Column("policy_id", sa.Integer, sa.ForeignKey("policies.id", ondelete="SET NULL"), nullable=True),
        sa.Column("meta", sa.JSON, nullable=True),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("chat_id", "position"),
    )
    op.create_index("ix_turns_chat_id", "turns", ["chat_id"])


def downgrade() -> None:
    op.drop_table("turns")
    op.drop_table("chats")
    op.drop_table("policies")
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("seconds")
    with op.batch_alter_table("claims") as batch:
        batch.drop_column("claimed_at")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("settings")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("group_name")
