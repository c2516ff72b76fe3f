"""The conversation's own types: what a message is, what a reply in flight is owed, and ids.

Plain values with no I/O, so that every layer can name a message without importing the
database: `db/` stores these, `protocol/` writes them as frames, `chat/` and `replies/` pass
them around.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

TITLE_CHARS = 80


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    # SQLite hands back naive datetimes; everything stored is UTC.
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.isoformat().replace("+00:00", "Z")


def title_from(content: str) -> str:
    words = " ".join(content.split())
    return words if len(words) <= TITLE_CHARS else words[: TITLE_CHARS - 1] + "…"


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """A message of a conversation, stored or about to be (`seq` 0 until it is)."""

    id: str
    conversation_id: str
    seq: int
    role: str
    content: str
    status: str
    client_id: str | None
    reply_to: str | None
    created_at: datetime
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_ms: int | None = None
    error: str | None = None
    parent_id: str | None = None  # the message it follows in its conversation's tree (None: a root)
    # The person's rating of an assistant reply (-1, 0, 1) and comment; read with READ_COLUMNS only.
    feedback_rating: int | None = None
    feedback_comment: str | None = None


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """A conversation's own system prompt and model (None: the server's defaults)."""

    system_prompt: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class ReplyMeta:
    """What is stored about how an assistant reply was produced."""

    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_ms: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """The reply a user message is owed, and the process incarnation generating it."""

    reply_id: str
    owner: str


@dataclass(frozen=True, slots=True)
class Regeneration:
    """A `regenerate` frame's client_id, the user message it answers again, and its reply."""

    client_id: str
    user_message_id: str
    reply_id: str


@dataclass(frozen=True, slots=True)
class Orphan:
    """A reply whose process went away before it was stored."""

    user_message_id: str
    reply_id: str
    conversation_id: str
    user_id: str
    content: str


def unsaved(*, message_id: str, conversation_id: str, role: str, content: str, status: str,
            client_id: str | None = None, reply_to: str | None = None, now: datetime | None = None,
            stats: ReplyMeta | None = None, parent_id: str | None = None) -> MessageRecord:
    """A message to append: its seq is the conversation's next, taken when it is stored."""
    meta = stats or ReplyMeta()
    return MessageRecord(message_id, conversation_id, 0, role, content, status, client_id, reply_to,
                         now or utcnow(), meta.model, meta.prompt_tokens, meta.completion_tokens,
                         meta.first_token_ms, meta.error, parent_id)
