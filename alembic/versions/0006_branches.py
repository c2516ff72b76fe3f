"""Branches: every message has a parent, every conversation a current leaf, and regenerations
are remembered by their client_id

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

A conversation becomes a tree of messages, still append-only (docs/protocol.md, "Branches"):
- messages.parent_id: the message it follows (NULL for a root), indexed with the conversation,
  so that a message's siblings and a branch's children are found without reading the tree;
- conversations.leaf_id: the current leaf, kept by the server, so that every tab, process and
  restart sees the same branch;
- regenerations: a `regenerate` frame's client_id and the reply it asked for, written when the
  new reply is claimed (before its `ack`), so that a resend of that client_id finds it, in flight
  or stored.

Conversations stored before keep their order: each message's parent becomes the message stored
before it (by seq), and the newest message becomes the leaf. The schema change is additive, but
a process of the previous release would write messages without a parent (roots) and never move
the leaf: stop the previous release's processes before the first process of this one serves.
"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("parent_id", sa.String(36), nullable=True))
    op.add_column("conversations", sa.Column("leaf_id", sa.String(36), nullable=True))
    op.execute("""
        UPDATE messages SET parent_id = (
            SELECT p.id FROM messages p
            WHERE p.conversation_id = messages.conversation_id AND p.seq < messages.seq
            ORDER BY p.seq DESC LIMIT 1)
    """)
    op.execute("""
        UPDATE conversations SET leaf_id = (
            SELECT m.id FROM messages m WHERE m.conversation_id = conversations.id
            ORDER BY m.seq DESC LIMIT 1)
    """)
    op.create_index("ix_messages_conversation_id_parent", "messages", ["conversation_id", "parent_id"])
    op.create_table(
        "regenerations",
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("user_message_id", sa.String(36), nullable=False),
        sa.Column("reply_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "client_id", name="pk_regenerations"),
    )


def downgrade() -> None:
    op.drop_table("regenerations")
    op.drop_index("ix_messages_conversation_id_parent", table_name="messages")
    # Plain DROP COLUMN on both (SQLite has it since 3.35): batch mode would copy the
    # conversations table, and dropping the old one would take every message with it (cascade).
    op.execute("ALTER TABLE conversations DROP COLUMN leaf_id")
    op.execute("ALTER TABLE messages DROP COLUMN parent_id")
