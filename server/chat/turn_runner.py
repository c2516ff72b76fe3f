"""One turn: commit the user's message, then have its reply generated and followed to its end.

Knows nothing of sockets: it talks to a `Sink` (the socket of who sent the message) and to the
reply bus, so it runs in-process in tests with a fake sink, a fake backend and a SQLite file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from server import metrics
from server.chat.commit_points import ConversationNotFound, MessageNotFound, accept_message, claim_again
from server.chat.producer import ReplyDeps, produce
from server.chat.regenerations import RegenerationRefused, claim_regeneration
from server.db.uow import DatabaseUnavailable
from server.domain import Claim, MessageRecord, new_id
from server.protocol import frames, outgoing
from server.protocol.codes import ErrorCode
from server.protocol.frames import MessageFrame, RegenerateFrame
from server.replies.follower import Follower
from server.replies.ports import ReplyFollowing, Watcher
from server.replies.reply import DELETED_DETAIL, LiveReply, Outcome

log = logging.getLogger(__name__)

DUPLICATE_WAIT_DETAIL = "the reply to this message is not ready yet; send it again with the same client_id"
REGENERATE_REFUSALS = {
    "not_found": (ErrorCode.NOT_FOUND, frames.NO_SUCH_MESSAGE),
    "busy": (ErrorCode.BUSY, "a reply to this message is being generated; wait for its done, or cancel it"),
    "used": (ErrorCode.INVALID, "this client_id was used by another message; use a new one"),
}

class TurnInProgress:
    """The turn in progress on a socket, so that a plain `cancel` can stop its reply, also before
    the reply exists (between the message's arrival and its `start`)."""

    __slots__ = ("cancelled", "reply")

    def __init__(self) -> None:
        self.cancelled = False
        self.reply: LiveReply | None = None  # the reply this turn generates (not one it only follows)

    def cancel(self) -> None:
        self.cancelled = True
        if self.reply is not None:
            self.reply.stop("cancelled")


class TurnRunner:
    __slots__ = ("deps", "bus", "owner", "user_id")  # one per socket, idle ones included

    def __init__(self, deps: ReplyDeps, bus: ReplyFollowing, owner: str, user_id: str):
        self.deps = deps  # what generating a reply needs (its producer publishes through deps.bus)
        self.bus = bus
        self.owner = owner  # this process incarnation, recorded with each reply it generates
        self.user_id = user_id

    async def run(self, frame: MessageFrame, to: Watcher, current: str | None,
                  turn: TurnInProgress) -> MessageRecord | None:
        """Run the turn to its end; the user's message (whose conversation is now the socket's
        current one), or None when it was not stored. Raises Disconnected if the client left."""
        received_at = time.perf_counter()
        claim = Claim(new_id(), self.owner)
        try:
            accepted = await accept_message(self.deps.db, self.user_id, frame, current, claim)
        except ConversationNotFound:
            await self._refuse(to, ErrorCode.NOT_FOUND, frames.NO_SUCH_CONVERSATION, frame.client_id)
            return None
        except MessageNotFound:
            await self._refuse(to, ErrorCode.NOT_FOUND, frames.NO_SUCH_MESSAGE, frame.client_id)
            return None
        except DatabaseUnavailable:
            log.warning("user message not stored: database unavailable (user %r)", self.user_id, exc_info=True)
            metrics.TURNS.labels("unavailable").inc()
            await self._unavailable(to, frame.client_id)
            return None
        message = accepted.message
        if accepted.regenerated:  # its client_id was a regenerate's: answered as that regenerate's resend
            await self.regenerate(RegenerateFrame(message.id, frame.client_id), to, turn)
            return message
        if accepted.duplicate:
            await to.sink.send(outgoing.ack(message, duplicate=True))
            await self._answer_duplicate(message, to, turn, received_at)
        else:
            reply = self.bus.claim(self.user_id, message, claim.reply_id)
            assert reply is not None, "a message just committed has no reply yet"
            # The ack goes first on the follower, so that it precedes `start` whatever the socket does.
            ack = outgoing.ack(message, duplicate=False)
            await self._generate(reply, message, to, turn, received_at, preamble=ack)
        return message

    async def _answer_duplicate(self, message: MessageRecord, to: Watcher, turn: TurnInProgress,
                                received_at: float) -> None:
        """Follow the reply in flight (any socket's, any process's), else send the stored one, else
        generate anew. Waiting for another process to settle is bounded by duplicate_wait_s."""
        bus, settings = self.bus, self.deps.settings
        grace = None if settings.is_sqlite else settings.lease_grace_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.duplicate_wait_s
        attempt = 0
        while True:
            if attempt >= 2:
                if loop.time() >= deadline:
                    log.warning("gave up waiting for the reply to %s after %.0fs", message.id,
                                settings.duplicate_wait_s)
                    await self._refuse(to, ErrorCode.UNAVAILABLE, DUPLICATE_WAIT_DETAIL, message.client_id)
                    return
                await asyncio.sleep(min(0.05 * attempt, 0.5))  # a race with another process: let it settle
            attempt += 1
            try:
                reply = await bus.locate(self.user_id, reply_to=message.id)
            except DatabaseUnavailable:
                await self._unavailable(to, message.client_id)
                return
            if reply is not None:
                follower = bus.follow(reply, to.sink, 0, client_id=message.client_id, hold_interrupted=True)
                outcome = await self._follow_to_end(follower, to)
                if outcome is None or not outcome.interrupted:
                    return
                deadline = loop.time() + settings.duplicate_wait_s
                continue  # that reply was interrupted: this resend gets a fresh one
            if await self._send_stored_reply(message, to):
                return
            claim = Claim(new_id(), self.owner)
            reply = bus.claim(self.user_id, message, claim.reply_id)
            if reply is None:  # another socket started one just now: follow it
                continue
            try:
                claimed = await claim_again(self.deps.db, self.user_id, message, claim, grace)
            except DatabaseUnavailable:
                # The database failed now; the reply goes on, and its store (retried) is what the
                # person needs. Only a crash before it would lose the record of it in flight.
                log.warning("reply %s to %s not recorded as in flight", reply.id, message.id, exc_info=True)
                claimed = "claimed"
            if claimed != "claimed":  # this claim only leaves the bus (no one follows it)
                await self.deps.bus.finish(reply, Outcome(None, ErrorCode.NOT_FOUND if claimed == "gone"
                                                          else ErrorCode.INTERNAL))
                if claimed == "gone":  # its conversation was deleted meanwhile
                    await self._refuse(to, ErrorCode.NOT_FOUND, DELETED_DETAIL, message.client_id)
                    return
                continue  # another process generates one: follow it
            await self._generate(reply, message, to, turn, received_at)
            return

    async def regenerate(self, frame: RegenerateFrame, to: Watcher, turn: TurnInProgress) -> MessageRecord | None:
        """A new reply to a stored user message, as a turn: ack once claimed, then the reply; a
        resent client_id gets that regeneration's reply (a fresh one when it ended interrupted)."""
        received_at = time.perf_counter()
        again, acked = False, False
        for _ in range(10):  # each pass follows a reply to its end: only interruptions come back here
            claim = Claim(new_id(), self.owner)
            try:
                regen = await claim_regeneration(self.deps.db, self.user_id, frame.reply_to, frame.client_id,
                                                 claim, again)
            except RegenerationRefused as e:
                code, detail = REGENERATE_REFUSALS[e.reason]
                await self._refuse(to, code, detail, frame.client_id)
                return None
            except DatabaseUnavailable:
                log.warning("regeneration not claimed: database unavailable (user %r)", self.user_id, exc_info=True)
                await self._unavailable(to, frame.client_id)
                return None
            message = dataclasses.replace(regen.user_message, client_id=frame.client_id)
            ack = None if acked else outgoing.regenerate_ack(message, frame.client_id, regen.duplicate)
            acked = True
            if not regen.duplicate:
                reply = self.bus.claim(self.user_id, message, regen.reply_id)
                if reply is None:  # one is in flight here although its record is not: answer busy
                    await self._refuse(to, *REGENERATE_REFUSALS["busy"], frame.client_id)
                    return None
                await self._generate(reply, message, to, turn, received_at, preamble=ack, added=False)
                return message
            if ack is not None:
                await to.sink.send(ack)
            reply = await self.bus.locate(self.user_id, reply_id=regen.reply_id)
            if reply is not None:
                follower = self.bus.follow(reply, to.sink, 0, client_id=frame.client_id, hold_interrupted=True)
                outcome = await self._follow_to_end(follower, to)
                if outcome is None or not outcome.interrupted:
                    return message
            else:
                reply_id = regen.reply_id
                stored = await self.deps.db.read(lambda store, r=reply_id: store.message_of(self.user_id, r))  # type: ignore[misc]
                if stored is not None and stored.status != "interrupted":
                    await to.sink.send(outgoing.done(stored))
                    return message
            again = True  # it ended interrupted (or was never stored): a fresh reply for this client_id
        await self._refuse(to, ErrorCode.UNAVAILABLE, DUPLICATE_WAIT_DETAIL, frame.client_id)
        return None

    async def _generate(self, reply: LiveReply, message: MessageRecord, to: Watcher, turn: TurnInProgress,
                        received_at: float, preamble: dict[str, object] | None = None, added: bool = True) -> None:
        bus = self.bus
        turn.reply = reply
        if turn.cancelled:
            reply.stop("cancelled")
        follower = bus.follow(reply, to.sink, 0, preamble=preamble, client_id=message.client_id)
        to.adopt(follower)
        await follower.pump()
        self.deps.bus.run(reply, produce(self.deps, reply, message, received_at))
        await bus.announce(message, reply, to.sink, added=added)
        await follower.ended

    @staticmethod
    async def _follow_to_end(follower: Follower, to: Watcher) -> Outcome | None:
        to.adopt(follower)
        await follower.pump()
        return await follower.ended

    async def _send_stored_reply(self, message: MessageRecord, to: Watcher) -> bool:
        """Answer a duplicate from its stored final reply; False when it needs a new one."""
        try:
            replies = await self.deps.db.read(lambda store: store.replies_to(message.id))
        except DatabaseUnavailable:
            await self._unavailable(to, message.client_id)
            return True
        final = next((r for r in reversed(replies) if r.status != "interrupted"), None)
        if final is None:
            return False
        await to.sink.send(outgoing.done(final))
        return True

    @staticmethod
    async def _unavailable(to: Watcher, client_id: str | None) -> None:
        metrics.MESSAGES_REFUSED.labels(ErrorCode.UNAVAILABLE.value).inc()
        await to.sink.send(outgoing.unavailable(client_id))

    @staticmethod
    async def _refuse(to: Watcher, code: ErrorCode, detail: str, client_id: str | None) -> None:
        metrics.MESSAGES_REFUSED.labels(code.value).inc()
        await to.sink.send(outgoing.error(code, detail, client_id))
