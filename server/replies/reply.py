"""A reply in flight, and how it ended.

A reply is claimed for one user message, gets its pieces published one by one (piece n has
`seq` n), and is finished with what was stored. Any socket of its user may follow it from a
`seq`: the pieces it missed, then the live ones, then the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.domain import MessageRecord
from server.protocol import outgoing
from server.protocol.codes import ErrorCode

DELETED_DETAIL = "the conversation was deleted; its reply was stopped"
NOT_STORED_DETAIL = "the reply could not be stored; send the message again with the same client_id to get it"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a reply ended: the stored row, or why there is none."""

    stored: MessageRecord | None
    failure: ErrorCode | None = None  # NOT_FOUND (deleted), UNAVAILABLE or INTERNAL when nothing was stored

    def frame(self, client_id: str | None) -> dict[str, Any]:
        """The last frame a follower gets; `client_id` only for the socket that sent the message."""
        if self.stored is not None:
            return outgoing.done(self.stored)
        if self.failure is ErrorCode.NOT_FOUND:
            return outgoing.error(ErrorCode.NOT_FOUND, DELETED_DETAIL, client_id)
        if self.failure is ErrorCode.UNAVAILABLE:
            return outgoing.error(ErrorCode.UNAVAILABLE, NOT_STORED_DETAIL, client_id)
        return outgoing.error(ErrorCode.INTERNAL, "internal error", client_id)

    @property
    def interrupted(self) -> bool:
        return self.stored is not None and self.stored.status == "interrupted"


class Pumped(Protocol):
    """What a reply needs of its followers (follower.py): to be told that there is more to send."""

    async def pump(self) -> None: ...


@dataclass(eq=False, slots=True)
class LiveReply:
    """A reply being generated (here, or in another process and mirrored here). Holds its text
    and who follows it, nothing else."""

    id: str
    user_id: str
    conversation_id: str
    reply_to: str  # the user message it answers
    pieces: list[str] = field(default_factory=list)  # piece n (1-based) has seq n
    followers: list[Pumped] = field(default_factory=list)
    outcome: Outcome | None = None
    stop_reason: str | None = None  # cancelled, interrupted or deleted, set once
    on_stop: Callable[[], object] | None = None  # the producer's: stops the model's stream
    task: asyncio.Task[None] | None = None  # the producer
    detached: asyncio.TimerHandle | bool = False  # its timer (or True with no limit) while no one follows

    @property
    def seq(self) -> int:
        return len(self.pieces)

    @property
    def content(self) -> str:
        return "".join(self.pieces)

    def stop(self, reason: str) -> None:
        if self.stop_reason is None and self.outcome is None:
            self.stop_reason = reason
            if self.on_stop is not None:
                self.on_stop()

    def start_frame(self) -> dict[str, Any]:
        return outgoing.start(self.conversation_id, self.id, self.reply_to)

    def listing(self) -> dict[str, Any]:
        """As `ready.replies_in_flight` lists it."""
        return {"conversation_id": self.conversation_id, "message_id": self.id, "reply_to": self.reply_to,
                "seq": self.seq}
