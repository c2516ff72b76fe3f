"""The reply seam's port, split by role: each user of the bus names only the part it needs.

- `ReplyPublishing`: the producer of a reply (run it, publish its pieces, finish it).
- `ReplyFollowing`: a turn or a socket that claims, finds and follows replies, and the sockets
  opened with ?sync=1 that hear their user's other sockets.
- `ReplyStopping`: cancel by id, a DELETE, shutdown.
- `InFlightListing`: what `ready.replies_in_flight` lists.
- `ConversationAnnouncing`: a title or settings changed (a PATCH, a title from the model).

`LocalReplyBus` (local.py) serves one process; `PgReplyBus` (postgres/bus.py) serves many
processes on one PostgreSQL. Both implement `ReplyBus`, the sum of the roles; only the wiring
(server/bootstrap.py) names them.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol

from server.domain import MessageRecord
from server.replies.follower import Follower
from server.replies.reply import LiveReply, Outcome
from server.replies.sink import Sink


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


class ReplyPublishing(Protocol):
    def run(self, reply: LiveReply, producer: Coroutine[Any, Any, None]) -> None:
        """Generate the reply in its own task: it outlives whichever socket asked for it."""
        ...

    async def publish(self, reply: LiveReply, piece: str) -> None:
        """The next piece (its seq is the new reply.seq); followers get it without the producer waiting."""
        ...

    async def finish(self, reply: LiveReply, outcome: Outcome) -> None:
        """The reply is stored (or failed): followers get their last frame; it is no longer in flight."""
        ...


class ReplyFollowing(Protocol):
    def claim(self, user_id: str, message: MessageRecord, reply_id: str) -> LiveReply | None:
        """The reply to `message`, now in flight; None when one is already being generated."""
        ...

    async def locate(self, user_id: str, *, reply_id: str | None = None,
                     reply_to: str | None = None) -> LiveReply | None:
        """The user's reply in flight in any process: one generated elsewhere comes back as one
        to follow here."""
        ...

    def follow(self, reply: LiveReply, sink: Sink, after: int, *, preamble: dict[str, Any] | None = None,
               client_id: str | None = None, hold_interrupted: bool = False) -> Follower:
        """Follow from `after` (the last seq the client has). Call `await follower.pump()` next."""
        ...

    def watch(self, user_id: str, watcher: Watcher) -> None: ...

    def unwatch(self, user_id: str, watcher: Watcher) -> None: ...

    async def announce(self, message: MessageRecord, reply: LiveReply, origin: Sink, added: bool = True) -> None:
        """A user message committed on `origin` (`added`), or a regeneration of one claimed there:
        its user's other sync sockets follow its reply (after `message_added` when it is new)."""
        ...

    def announce_selected(self, user_id: str, conversation_id: str, leaf_id: str, origin: Sink | None) -> None:
        """A branch was selected: the user's sync sockets (but `origin`) hear `selected`."""
        ...


class ReplyStopping(Protocol):
    def stop(self, user_id: str, reply_id: str, reason: str) -> bool:
        """Stop the user's reply wherever it is generated; True when it was in this process."""
        ...

    def stop_conversation(self, conversation_id: str, reason: str) -> int:
        """Stop every reply of a conversation (a DELETE) in every process; how many were here."""
        ...

    def announce_deleted(self, user_id: str, conversation_id: str) -> None: ...

    async def shut_down(self, timeout_s: float) -> None:
        """Stop every reply as interrupted and wait (at most timeout_s) until each is stored."""
        ...


class InFlightListing(Protocol):
    async def listing(self, user_id: str) -> list[dict[str, Any]]:
        """`ready.replies_in_flight`: the user's replies in flight in every process."""
        ...

    def in_flight(self, user_id: str) -> list[LiveReply]:
        """The user's replies generated in this process now."""
        ...

    def running(self, reply_id: str) -> bool:
        """Whether this process generates that reply now."""
        ...


class ConversationAnnouncing(Protocol):
    def announce_updated(self, user_id: str, conversation: dict[str, Any]) -> None:
        """A conversation's title or settings changed: the user's sync sockets in every process
        hear `conversation_updated` with it."""
        ...


class ReplyBus(ReplyPublishing, ReplyFollowing, ReplyStopping, InFlightListing, ConversationAnnouncing, Protocol):
    """All the roles: what the wiring builds and hands out."""

    async def close(self) -> None:
        """Release what the bus holds besides replies (a LISTEN connection)."""
        ...

    def health(self) -> dict[str, str]:
        """What /readyz reports of the bus: {} when it needs nothing outside this process."""
        ...
