"""The tables. Alembic owns the schema; tests check that these and the migrations agree."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = String(36)
USER_ID = String(255)

conversations = Table(
    "conversations",
    metadata,
    Column("id", ID, primary_key=True),
    Column("user_id", USER_ID, nullable=False),
    Column("title", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The highest `seq` given to a message of this conversation. Taking the next one is an
    # UPDATE of this row, so concurrent writers to one conversation queue on its row lock.
    Column("last_seq", Integer, nullable=False),
    # The current leaf: the message that history ends at and that a new message follows
    # (NULL: none yet). Always a stored message of the conversation.
    Column("leaf_id", ID, nullable=True),
    # Who gave the title: "words" (the first message's first words), "model" (CHAT_TITLES=model)
    # or "user" (a rename, which the server never overwrites).
    Column("title_source", String(8), nullable=False, server_default="words"),
    # What its turns send to the backend; NULL: the server's CHAT_SYSTEM_PROMPT and CHAT_MODEL.
    Column("system_prompt", Text, nullable=True),
    Column("model", String(200), nullable=True),
    CheckConstraint("title_source IN ('words', 'model', 'user')", name="title_source"),
    Index("ix_conversations_user_updated", "user_id", "updated_at"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", ID, primary_key=True),
    Column("conversation_id", ID, ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", USER_ID, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("client_id", String(64), nullable=True),
    Column("reply_to", ID, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Assistant messages: what produced them (NULL where the backend did not say).
    Column("model", String(200), nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("first_token_ms", Integer, nullable=True),
    Column("error", Text, nullable=True),  # why a reply with status "error" failed
    # The message it follows in the tree (NULL: a root). No foreign key: only a whole
    # conversation is ever deleted, and a key would cost each insert a lookup and a lock.
    Column("parent_id", ID, nullable=True),
    # The person's rating of an assistant reply (-1, 0 or 1; NULL: none given) and its comment.
    Column("feedback_rating", SmallInteger, nullable=True),
    Column("feedback_comment", Text, nullable=True),
    UniqueConstraint("conversation_id", "seq", name="uq_messages_conversation_seq"),
    # The idempotency key is unique per user in the database, not only in the server's memory.
    UniqueConstraint("user_id", "client_id", name="uq_messages_user_client_id"),
    CheckConstraint("role IN ('user', 'assistant')", name="role"),
    CheckConstraint("status IN ('complete', 'cancelled', 'error', 'interrupted')", name="status"),
    CheckConstraint("feedback_rating IN (-1, 0, 1)", name="feedback_rating"),
    Index("ix_messages_reply_to", "reply_to"),
    Index("ix_messages_conversation_id_parent", "conversation_id", "parent_id"),  # siblings, children
)

# One row per reply being generated, written in the same statement as its user message and
# removed in the same statement that stores the reply: what a process that died left behind is
# what the next start (or, with many processes, a live one) stores as `interrupted`.
# No foreign keys and no index but the key: every turn writes and removes a row here, and each
# key would make that insert look up and lock two more rows (migration 0005). Deleting a
# conversation removes its rows (Store.delete_conversation).
replies_in_flight = Table(
    "replies_in_flight",
    metadata,
    Column("user_message_id", ID, primary_key=True),
    Column("reply_id", ID, nullable=False),
    Column("conversation_id", ID, nullable=False),
    Column("user_id", USER_ID, nullable=False),
    # The process incarnation generating it (a new id at every start).
    Column("owner", String(64), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    # The text so far, as of the last checkpoint (a long reply's; empty for most).
    Column("content", Text, nullable=False),
)

# One row per live chat-server process (PostgreSQL; UNLOGGED there: soft state). A process renews
# its lease every heartbeat; one whose lease ran out, or whose named session left PostgreSQL and
# whose heartbeat went stale, is dead: a live process stores its replies in flight as interrupted.
# A `regenerate` frame's client_id and the reply it asked for, written with the claim on that
# reply (before the ack): a resend of the client_id finds it, in flight or stored.
regenerations = Table(
    "regenerations",
    metadata,
    Column("user_id", USER_ID, primary_key=True),
    Column("client_id", String(64), primary_key=True),
    Column("user_message_id", ID, nullable=False),
    Column("reply_id", ID, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

process_leases = Table(
    "process_leases",
    metadata,
    Column("owner", String(64), primary_key=True),  # the incarnation id, as replies_in_flight.owner
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),  # database time, not the process's
    Column("expires_at", DateTime(timezone=True), nullable=False),
    # The process keeps a session named "chat-server <owner>" open (its LISTEN connection), so
    # that its death shows in pg_stat_activity within a heartbeat or two, not at the lease's end.
    Column("named_session", Boolean, nullable=False),
)

server_secrets = Table(
    "server_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
