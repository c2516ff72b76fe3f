"""replies in flight: what a process is generating, so that a crash leaves nothing unanswered

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "replies_in_flight",
        sa.Column("user_message_id", sa.String(length=36), nullable=False),
        sa.Column("reply_id", sa.String(length=36), nullable=False),
        sa.Column("conversation_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["user_message_id"], ["messages.id"],
                                name="fk_replies_in_flight_user_message_id_messages", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"],
                                name="fk_replies_in_flight_conversation_id_conversations", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_message_id", name="pk_replies_in_flight"),
    )
    op.create_index("ix_replies_in_flight_owner", "replies_in_flight", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_replies_in_flight_owner", table_name="replies_in_flight")
    op.drop_table("replies_in_flight")
