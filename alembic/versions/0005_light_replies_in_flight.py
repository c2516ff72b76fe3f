"""replies_in_flight without foreign keys or the owner index: a turn writes and removes its row,
and both cost it PostgreSQL work that nothing needed

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

Drops the two foreign keys of replies_in_flight (to messages and to conversations) and its index
on `owner`. Each foreign key made the claim's INSERT look up and lock (FOR KEY SHARE) the message
and the conversation row it names; no query filters on `owner =` (the sweep's is `owner <>`), so
its index was only ever written. Together they were about 5 % of PostgreSQL's CPU per turn:
637 against 670 us with the keys and index put back, measured 2026-11-29 with
bench/pg_turn_cost.py's loop, alternated (docs/benchmarks.md). Nothing relies on the cascades:
Store.delete_conversation removes a conversation's rows itself, and a reply's statement removes
its row even when the conversation is gone. The downgrade first deletes rows whose message is gone,
which the keys would refuse.
"""
from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOREIGN_KEYS = (
    ("fk_replies_in_flight_user_message_id_messages", "messages", "user_message_id"),
    ("fk_replies_in_flight_conversation_id_conversations", "conversations", "conversation_id"),
)


def upgrade() -> None:
    op.drop_index("ix_replies_in_flight_owner", table_name="replies_in_flight")
    # SQLite cannot drop a constraint: batch mode copies the table without it.
    with op.batch_alter_table("replies_in_flight") as batch:
        for name, _, _ in FOREIGN_KEYS:
            batch.drop_constraint(name, type_="foreignkey")


def downgrade() -> None:
    # Rows whose message is gone would fail the keys: they belong to deleted conversations.
    op.execute("DELETE FROM replies_in_flight WHERE user_message_id NOT IN (SELECT id FROM messages)")
    with op.batch_alter_table("replies_in_flight") as batch:
        for name, table, column in FOREIGN_KEYS:
            batch.create_foreign_key(name, table, [column], ["id"], ondelete="CASCADE")
    op.create_index("ix_replies_in_flight_owner", "replies_in_flight", ["owner"])
