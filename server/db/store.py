"""The repository: every statement the server runs, on a connection a unit of work owns.

It never commits and never deletes or rewrites a message to store another one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, literal_column, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.db.schema import conversations, messages, server_secrets

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
class Message:
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

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "role": self.role,
            "content": self.content,
            "status": self.status,
            "client_id": self.client_id,
            "created_at": iso(self.created_at),
        }
        if self.role == "assistant":
            out["reply_to"] = self.reply_to
            out["model"] = self.model
            out["usage"] = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
            out["first_token_ms"] = self.first_token_ms
        return out


@dataclass(frozen=True, slots=True)
class ReplyMeta:
    """What is stored about how an assistant reply was produced."""

    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_ms: int | None = None


MESSAGE_COLUMNS = (
    messages.c.id,
    messages.c.conversation_id,
    messages.c.seq,
    messages.c.role,
    messages.c.content,
    messages.c.status,
    messages.c.client_id,
    messages.c.reply_to,
    messages.c.created_at,
    messages.c.model,
    messages.c.prompt_tokens,
    messages.c.completion_tokens,
    messages.c.first_token_ms,
)


class Store:
    def __init__(self, conn: AsyncConnection):
        self.conn = conn

    async def ping(self) -> None:
        await self.conn.execute(text("SELECT 1"))

    # -- conversations ------------------------------------------------------------------------
    async def create_conversation(self, user_id: str, first_content: str, now: datetime) -> str:
        """A new conversation whose first message takes seq 1."""
        conversation_id = new_id()
        await self.conn.execute(
            insert(conversations).values(id=conversation_id, user_id=user_id, title=title_from(first_content),
                                         created_at=now, updated_at=now, last_seq=1))
        return conversation_id

    async def next_seq(self, conversation_id: str, user_id: str, now: datetime) -> int | None:
        """Reserve the conversation's next position; None when it is not this user's."""
        result = await self.conn.execute(
            update(conversations)
            .where(conversations.c.id == conversation_id, conversations.c.user_id == user_id)
            .values(last_seq=conversations.c.last_seq + 1, updated_at=now)
            .returning(conversations.c.last_seq))
        return result.scalar()

    async def owns_conversation(self, conversation_id: str, user_id: str) -> bool:
        result = await self.conn.execute(
            select(literal_column("1")).where(conversations.c.id == conversation_id,
                                              conversations.c.user_id == user_id))
        return result.first() is not None

    async def list_conversations(self, user_id: str, limit: int = 200) -> list[dict[str, Any]]:
        result = await self.conn.execute(
            select(conversations.c.id, conversations.c.title, conversations.c.created_at,
                   conversations.c.updated_at)
            .where(conversations.c.user_id == user_id)
            .order_by(conversations.c.updated_at.desc(), conversations.c.id)
            .limit(limit))
        return [{"id": r.id, "title": r.title, "created_at": iso(r.created_at), "updated_at": iso(r.updated_at)}
                for r in result]

    async def delete_conversation(self, conversation_id: str, user_id: str) -> bool:
        if not await self.owns_conversation(conversation_id, user_id):
            return False
        await self.conn.execute(delete(messages).where(messages.c.conversation_id == conversation_id))
        await self.conn.execute(delete(conversations).where(conversations.c.id == conversation_id))
        return True

    # -- messages -------------------------------------------------------------------------------
    async def add_message(self, *, message_id: str, conversation_id: str, user_id: str, seq: int, role: str,
                          content: str, status: str, client_id: str | None, reply_to: str | None,
                          now: datetime, stats: ReplyMeta | None = None) -> Message:
        meta = stats or ReplyMeta()
        await self.conn.execute(
            insert(messages).values(id=message_id, conversation_id=conversation_id, user_id=user_id, seq=seq,
                                    role=role, content=content, status=status, client_id=client_id,
                                    reply_to=reply_to, created_at=now, model=meta.model,
                                    prompt_tokens=meta.prompt_tokens, completion_tokens=meta.completion_tokens,
                                    first_token_ms=meta.first_token_ms))
        return Message(message_id, conversation_id, seq, role, content, status, client_id, reply_to, now,
                       meta.model, meta.prompt_tokens, meta.completion_tokens, meta.first_token_ms)

    async def by_client_id(self, user_id: str, client_id: str) -> Message | None:
        result = await self.conn.execute(
            select(*MESSAGE_COLUMNS).where(messages.c.user_id == user_id, messages.c.client_id == client_id))
        row = result.first()
        return Message(*row) if row else None

    async def replies_to(self, message_id: str) -> list[Message]:
        result = await self.conn.execute(
            select(*MESSAGE_COLUMNS).where(messages.c.reply_to == message_id).order_by(messages.c.seq))
        return [Message(*row) for row in result]

    async def seq_of(self, message_id: str, conversation_id: str) -> int | None:
        result = await self.conn.execute(
            select(messages.c.seq).where(messages.c.id == message_id, messages.c.conversation_id == conversation_id))
        return result.scalar()

    async def page(self, conversation_id: str, before_seq: int | None, limit: int) -> tuple[list[Message], bool]:
        """The newest `limit` messages older than `before_seq`, oldest first, and whether more remain."""
        query = select(*MESSAGE_COLUMNS).where(messages.c.conversation_id == conversation_id)
        if before_seq is not None:
            query = query.where(messages.c.seq < before_seq)
        result = await self.conn.execute(query.order_by(messages.c.seq.desc()).limit(limit + 1))
        rows = [Message(*row) for row in result]
        has_more = len(rows) > limit
        return list(reversed(rows[:limit])), has_more

    async def recent(self, conversation_id: str, limit: int) -> list[Message]:
        return (await self.page(conversation_id, None, limit))[0]

    async def count_messages(self) -> int:
        return (await self.conn.execute(select(func.count()).select_from(messages))).scalar_one()

    # -- server secrets ---------------------------------------------------------------------------
    async def get_or_create_secret(self, name: str, make: str) -> str:
        """The stored secret `name`; `make` is stored first if there is none (first writer wins)."""
        found = (await self.conn.execute(select(server_secrets.c.value).where(server_secrets.c.name == name))).scalar()
        if found is not None:
            return found
        await self.conn.execute(insert(server_secrets).values(name=name, value=make, created_at=utcnow()))
        return make
