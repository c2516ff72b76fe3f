"""Titles, conversation settings, feedback and the search index

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

- conversations.title_source ("words", "model" or "user": a title the user gave is never
  replaced), system_prompt and model (NULL: the server's defaults);
- messages.feedback_rating (-1, 0, 1) and feedback_comment;
- the full-text index of messages (server/db/search_index.py): a GIN index on PostgreSQL, an
  FTS5 table kept by triggers on SQLite, filled with the messages stored before.

Additive: a process of the previous release goes on working beside this one (it does not know the
new columns; its messages are indexed by the database all the same).
"""
from collections.abc import Sequence

from alembic import op
from server.db import search_index

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Raw SQL for the CHECKs: SQLite takes a column constraint in ADD COLUMN, not a table one.
    op.execute("ALTER TABLE conversations ADD COLUMN title_source VARCHAR(8) DEFAULT 'words' NOT NULL "
               "CONSTRAINT ck_conversations_title_source CHECK (title_source IN ('words', 'model', 'user'))")
    op.execute("ALTER TABLE conversations ADD COLUMN system_prompt TEXT")
    op.execute("ALTER TABLE conversations ADD COLUMN model VARCHAR(200)")
    op.execute("ALTER TABLE messages ADD COLUMN feedback_rating SMALLINT "
               "CONSTRAINT ck_messages_feedback_rating CHECK (feedback_rating IN (-1, 0, 1))")
    op.execute("ALTER TABLE messages ADD COLUMN feedback_comment TEXT")
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in search_index.SQLITE_CREATE if sqlite else search_index.PG_CREATE:
        op.execute(statement)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in search_index.SQLITE_DROP if sqlite else search_index.PG_DROP:
        op.execute(statement)
    # Plain DROP COLUMN (see 0006); SQLite drops a column with its own CHECK.
    for table, column in (("messages", "feedback_comment"), ("messages", "feedback_rating"),
                          ("conversations", "model"), ("conversations", "system_prompt"),
                          ("conversations", "title_source")):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
