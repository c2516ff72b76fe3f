"""What the client hands back: plain frozen values built from the server's frames."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reply:
    """The assistant's reply as stored: `status` is complete, cancelled, error or interrupted."""

    content: str
    status: str
    message_id: str
    reply_to: str | None
    conversation_id: str
    client_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "complete"


@dataclass(frozen=True)
class Message:
    """One stored message of a conversation (a `history` item)."""

    id: str
    role: str
    content: str
    status: str
    client_id: str | None = None
    created_at: str | None = None
    reply_to: str | None = None

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> Message:
        return cls(id=m["id"], role=m["role"], content=m["content"], status=m["status"],
                   client_id=m.get("client_id"), created_at=m.get("created_at"), reply_to=m.get("reply_to"))


@dataclass(frozen=True)
class HistoryPage:
    conversation_id: str
    messages: list[Message]
    has_more: bool


@dataclass(frozen=True)
class ReplyInFlight:
    """An item of `ready.replies_in_flight`: a reply of this user being generated right now."""

    conversation_id: str
    message_id: str
    reply_to: str
    seq: int


@dataclass(frozen=True)
class Event:
    """What a `sync=True` socket hears of the user's other sockets: `message_added`,
    `conversation_deleted`, and the `start`, `delta` and `done` of their replies (`frame` is the
    frame as received)."""

    type: str
    conversation_id: str | None
    message_id: str | None
    frame: dict[str, Any] = field(repr=False)

    @property
    def message(self) -> Message | None:
        m = self.frame.get("message")
        return Message.from_wire(m) if isinstance(m, dict) else None
