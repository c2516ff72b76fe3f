"""One socket following one reply: a cursor into the reply's pieces, never a queue of frames.

The producer never waits for a follower. While the socket takes frames without waiting
(it is writable), `pump` sends them inline: a send then completes at once, which is as cheap as
the turn path can be. When the socket would wait, a drain task takes over and sends what is
due as fast as the client reads; the reply's own text is the buffer, so a follower that falls
behind costs one integer, and one that stops reading is cut off by the socket's send timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server.protocol import outgoing
from server.replies.sink import Disconnected, Sink

if TYPE_CHECKING:
    from server.replies.reply import LiveReply, Outcome

# What the follower sends next.
_PREAMBLE, _START, _DELTAS, _ENDED = range(4)


class Follower:
    __slots__ = ("reply", "sink", "sent", "client_id", "hold_interrupted", "ended", "_preamble", "_stage",
                 "_busy", "_task", "_on_leave")

    def __init__(self, reply: LiveReply, sink: Sink, after: int, on_leave: Callable[[Follower], None], *,
                 preamble: dict[str, Any] | None = None, client_id: str | None = None,
                 hold_interrupted: bool = False):
        self.reply = reply
        self.sink = sink
        self.sent = max(0, after)  # the seq of the last piece the client has
        self.client_id = client_id  # repeated in an error that ends the reply (the sender's socket)
        # A duplicate waiting for someone else's reply: if that one ends interrupted, the waiter
        # gets a fresh reply instead of its `done`.
        self.hold_interrupted = hold_interrupted
        # Resolves when the follower is done: with the reply's outcome once its last frame went
        # out, or None when the follower was dropped first (socket gone, or replaced).
        self.ended: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        self._preamble = preamble
        self._stage = _PREAMBLE if preamble is not None else _START
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._on_leave = on_leave

    @property
    def active(self) -> bool:
        return self._stage != _ENDED

    def rewind(self, after: int) -> None:
        """The client asked again (resume on a socket that already follows): start over from `after`."""
        if self._stage == _ENDED:
            return
        self.sent = max(0, after)
        self._stage = _START

    async def pump(self) -> None:
        """Send what is due while the socket takes it at once; hand the rest to a drain task."""
        if self._busy or self._stage == _ENDED:
            return
        self._busy = True
        try:
            while (frame := self._next()) is not None:
                if not self.sink.writable():
                    self._task = asyncio.ensure_future(self._drain())
                    return
                await self.sink.send(frame)
                self._advance()
        except Disconnected:
            self.drop()
        finally:
            if self._task is None:
                self._busy = False

    async def _drain(self) -> None:
        try:
            while (frame := self._next()) is not None:
                await self.sink.send(frame)  # waits while the client does not read; bounded by the send timeout
                self._advance()
        except Disconnected:
            self.drop()
        finally:
            self._task = None
            self._busy = False

    def drop(self) -> None:
        """Stop following without a last frame (the socket went away, or no longer wants it)."""
        self._end(None)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def _next(self) -> dict[str, Any] | None:
        stage, reply = self._stage, self.reply
        if stage == _PREAMBLE:
            return self._preamble
        if stage == _START:
            return reply.start_frame()
        if stage == _DELTAS:
            if self.sent < reply.seq:
                return outgoing.delta(reply.id, self.sent + 1, reply.pieces[self.sent])
            outcome = reply.outcome
            if outcome is None:
                return None
            if self.hold_interrupted and outcome.interrupted:
                self._end(outcome)  # the waiter generates anew; this reply's end is not for it
                return None
            return outcome.frame(self.client_id)
        return None

    def _advance(self) -> None:
        stage = self._stage
        if stage == _PREAMBLE:
            self._preamble = None
            self._stage = _START
        elif stage == _START:
            self._stage = _DELTAS
        elif self.sent < self.reply.seq:
            self.sent += 1
        else:  # the last frame went out (pieces never follow the outcome)
            self._end(self.reply.outcome)

    def _end(self, outcome: Outcome | None) -> None:
        if self._stage == _ENDED:
            return
        self._stage = _ENDED
        self._preamble = None
        if not self.ended.done():
            self.ended.set_result(outcome)
        self._on_leave(self)
