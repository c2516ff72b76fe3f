"""The reply seam: replies in flight as streams with positions.

A reply is claimed for one user message, gets its pieces published one by one (piece n has
`seq` n), and is finished with what was stored. Any socket of its user may follow it from a
`seq`: the pieces it missed, then the live ones, then the end. A reply no one follows is
*detached*: it goes on for a while, then stops.

`ReplyBus` is the interface. `LocalReplyBus` (local_bus.py) serves one process; an adapter for
many processes (PostgreSQL LISTEN/NOTIFY) implements the same methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.chat.follower import Follower
from server.chat.sink import Sink
from server.db.store import Message
from server.protocol import outgoing
from server.protocol.codes import ErrorCode

DELETED_DETAIL = "the conversation was deleted; its reply was stopped"
NOT_STORED_DETAIL = "the reply could not be stored; send the message again with the same client_id to get it"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a reply ended: the stored row, or why there is none."""

    stored: Message | None
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


@dataclass(eq=False, slots=True)
class Reply:
    """A reply being generated. Holds its text and who follows it, nothing else."""

    id: str
    user_id: str
    conversation_id: str
    reply_to: str  # the user message it answers
    pieces: list[str] = field(default_factory=list)  # piece n (1-based) has seq n
    followers: list[Follower] = field(default_factory=list)
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


class Watcher(Protocol):
    """A socket opened with ?sync=1: it hears what its user's other sockets do."""

    @property
    def sink(self) -> Sink: ...

    def adopt(self, follower: Follower) -> None:
        """Keep a follower the bus made for it (a reply another socket started)."""
        ...

    def event(self, frame: dict[str, Any]) -> None:
        """A frame to send whenever the socket can (conversation_deleted)."""
        ...


class ReplyBus(Protocol):
    def claim(self, user_id: str, message: Message, reply_id: str) -> Reply | None:
        """The reply to `message`, now in flight; None when one is already being generated."""
        ...

    def run(self, reply: Reply, producer: Coroutine[Any, Any, None]) -> None:
        """Generate the reply in its own task: it outlives whichever socket asked for it."""
        ...

    async def publish(self, reply: Reply, piece: str) -> None:
        """The next piece (its seq is the new reply.seq); followers get it without the producer waiting."""
        ...

    async def finish(self, reply: Reply, outcome: Outcome) -> None:
        """The reply is stored (or failed): followers get their last frame; it is no longer in flight."""
        ...

    def find(self, user_id: str, *, reply_id: str | None = None, reply_to: str | None = None) -> Reply | None: ...

    def in_flight(self, user_id: str) -> list[Reply]:
        """This process's replies of the user in flight."""
        ...

    async def locate(self, user_id: str, *, reply_id: str | None = None, reply_to: str | None = None) -> Reply | None:
        """Like `find`, in any process: a reply generated elsewhere comes back as one to follow here."""
        ...

    async def listing(self, user_id: str) -> list[dict[str, Any]]:
        """`ready.replies_in_flight`: the user's replies in flight in every process."""
        ...

    def follow(self, reply: Reply, sink: Sink, after: int, *, preamble: dict[str, Any] | None = None,
               client_id: str | None = None, hold_interrupted: bool = False) -> Follower:
        """Follow from `after` (the last seq the client has). Call `await follower.pump()` next."""
        ...

    def stop(self, user_id: str, reply_id: str, reason: str) -> bool: ...

    def stop_conversation(self, conversation_id: str, reason: str) -> int: ...

    def watch(self, user_id: str, watcher: Watcher) -> None: ...

    def unwatch(self, user_id: str, watcher: Watcher) -> None: ...

    async def announce(self, message: Message, reply: Reply, origin: Sink) -> None:
        """A user message committed on `origin`: its user's other sync sockets follow its reply."""
        ...

    def announce_deleted(self, user_id: str, conversation_id: str) -> None: ...

    async def shut_down(self, timeout_s: float) -> None:
        """Stop every reply as interrupted and wait (at most timeout_s) until each is stored."""
        ...
