"""One socket: a reader that parses and dispatches frames, and a worker that runs turns one at a time.

The session holds no database connection: the turn runner runs a unit of work only at a turn's
commit points. An idle socket holds no task besides its reader: the worker exists while messages
wait. Replies are the bus's: when the socket goes away, the replies it followed go on detached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from server import metrics
from server.auth import LEEWAY_S, Identity
from server.chat.limits import TokenBucket
from server.chat.services import Services
from server.chat.turn_runner import TurnInProgress, TurnRunner
from server.db import tree
from server.db.store import InvalidBefore, NotFound
from server.db.uow import DatabaseUnavailable
from server.protocol import frames, outgoing
from server.protocol.codes import CloseCode, ErrorCode
from server.protocol.frames import (
    CancelFrame,
    FrameError,
    HistoryFrame,
    MessageFrame,
    RegenerateFrame,
    ResumeFrame,
    SelectFrame,
)
from server.replies.follower import Follower
from server.replies.sink import ClientSocket, Disconnected

log = logging.getLogger(__name__)

TurnFrame = MessageFrame | RegenerateFrame  # what queues as a turn

class ChatSession:
    def __init__(self, channel: ClientSocket, services: Services, identity: Identity, sync: bool = False):
        self.sink = self.channel = channel
        self.svc = services
        self.identity = identity
        self.user_id = identity.user_id
        self.sync = sync  # hears the user's other sockets (?sync=1)
        self.conversation_id: str | None = None
        self.waiting: list[TurnFrame] = []  # at most max_waiting + 1: a list is the smallest queue
        self.turn: TurnInProgress | None = None
        self.closing = False
        self.worker: asyncio.Task[None] | None = None
        self.followers: dict[str, Follower] | None = None  # by reply id; made on first use
        self._events: set[asyncio.Task[None]] | None = None
        self.runner = TurnRunner(services.reply_deps, services.bus, services.owner, self.user_id)
        # The frame rate (every frame, control frames too) is kept below, in server/web/ws_protocol.py.
        # Refusals for the user's message rate; running out of these (more than flood_close_after
        # a minute, sustained) means the client ignores rate_limited: it is closed.
        strikes = services.settings.flood_close_after
        self.strikes = TokenBucket(strikes / 60, strikes)

    # -- lifecycle -----------------------------------------------------------------------------
    async def serve(self, requested_conversation: str | None) -> None:
        """Run the accepted socket until it closes."""
        hub, bus = self.svc.hub, self.svc.bus
        hub.add(self)
        if self.sync:
            bus.watch(self.user_id, self)
        expiry = self._close_at_expiry()
        try:
            start = await self._resolve_start(requested_conversation)
            in_flight = await bus.listing(self.user_id)
            await self.sink.send(outgoing.ready(self.user_id, self.conversation_id, self.identity.minted_token,
                                                in_flight))
            if start is not None:
                await self.sink.send(start)
            await self._read()
        except Disconnected:
            pass
        except Exception:
            log.exception("socket handler failed (user %r)", self.user_id)
            await self.channel.close(CloseCode.INTERNAL)
        finally:
            if expiry is not None:
                expiry.cancel()
            self._leave()
            hub.remove(self)

    def _close_at_expiry(self) -> asyncio.TimerHandle | None:
        """A socket whose token expires is closed then (1008), not at the next frame it sends: a
        ?sync=1 tab that only listens would otherwise hear its user's conversations for ever."""
        expires_at = self.identity.expires_at
        if expires_at is None:
            return None
        delay = max(0.0, expires_at + LEEWAY_S - time.time())
        return asyncio.get_running_loop().call_later(delay, lambda: self.event_task(self._expire()))

    async def _expire(self) -> None:
        log.info("closing a socket whose token expired (user %r)", self.user_id)
        self._leave()
        await self.channel.close(CloseCode.POLICY, "token expired")

    async def shut_down(self) -> None:
        """Server shutdown (replies already stopped and stored): close with 1001."""
        self._leave()
        await self.channel.close(CloseCode.GOING_AWAY, "server shutting down")

    def _leave(self) -> None:
        """The socket is gone: waiting messages are dropped (never acknowledged, so nothing is
        lost) and the replies it followed go on without it, detached."""
        self.closing = True
        self.waiting.clear()
        if self.sync:
            self.svc.bus.unwatch(self.user_id, self)
        for follower in list((self.followers or {}).values()):
            follower.drop()
        self.followers = None

    async def _resolve_start(self, requested: str | None) -> dict[str, Any] | None:
        if requested is None:
            return None
        if not frames.known_id(requested):
            return outgoing.error(ErrorCode.NOT_FOUND, frames.NO_SUCH_CONVERSATION)
        try:
            owned = await self.svc.db.read(lambda store: store.owns_conversation(requested, self.user_id))
        except DatabaseUnavailable:
            return outgoing.unavailable()
        if owned:
            self.conversation_id = requested
            return None
        return outgoing.error(ErrorCode.NOT_FOUND, frames.NO_SUCH_CONVERSATION)

    # -- what the bus hands this socket (Watcher) ------------------------------------------------
    def adopt(self, follower: Follower) -> None:
        if self.closing:
            follower.drop()
            return
        if self.followers is None:
            self.followers = {}
        else:  # forget the ones that ended, so a long-lived socket holds only what it follows now
            for reply_id in [k for k, f in self.followers.items() if not f.active]:
                del self.followers[reply_id]
        # One follower per reply and socket (a tab that resends the message another tab's reply
        # answers would otherwise get each frame twice): the newer one, which starts from seq 1.
        previous = self.followers.get(follower.reply.id)
        if previous is not None and previous is not follower:
            previous.drop()
        self.followers[follower.reply.id] = follower

    def event(self, frame: dict[str, Any]) -> None:
        if not self.closing:
            self.event_task(self._send_event(frame))

    def event_task(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the reader, kept until it ends."""
        if self._events is None:
            self._events = set()
        task = asyncio.ensure_future(work)
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def _send_event(self, frame: dict[str, Any]) -> None:
        with contextlib.suppress(Disconnected):
            await self.sink.send(frame)

    # -- reading -------------------------------------------------------------------------------
    async def _read(self) -> None:
        max_chars = self.svc.settings.max_message_chars
        while True:
            incoming = await self.channel.receive()
            if self.identity.expired():
                await self.channel.close(CloseCode.POLICY, "token expired")
                return
            if incoming.text is None:
                await self._refuse(FrameError(ErrorCode.INVALID, "binary frames are not accepted; send text"))
                continue
            try:
                frame = frames.parse(incoming.text, max_chars)
            except FrameError as e:
                await self._refuse(e)
                continue
            if isinstance(frame, MessageFrame | RegenerateFrame):  # a turn
                if self.svc.limits.allow_message(self.user_id):
                    await self._enqueue(frame)
                elif not await self._refuse_over_rate(frame):
                    return  # closed for flooding
            elif isinstance(frame, CancelFrame) and not frame.message_id:
                self._cancel(frame)  # the socket's own turn: no read, no broadcast
            elif not self.svc.limits.allow_read(self.user_id):
                limit = self.svc.settings.reads_per_minute
                await self._refuse(FrameError(ErrorCode.RATE_LIMITED, f"more than {limit} resume, history, "
                                              "select and cancel frames a minute; wait, then send it again"))
            elif isinstance(frame, CancelFrame):
                self._cancel(frame)
            else:
                await self._read_only(frame)

    async def _read_only(self, frame: ResumeFrame | HistoryFrame | SelectFrame) -> None:
        """A frame answered from what is stored or in flight (or, select, a move of the leaf); the
        database's failure gets one answer."""
        try:
            if isinstance(frame, ResumeFrame):
                await self._resume(frame)
            elif isinstance(frame, SelectFrame):
                await self._select(frame)
            else:
                await self.sink.send(await self._history(frame))
        except DatabaseUnavailable:
            await self.sink.send(outgoing.unavailable())

    async def _select(self, frame: SelectFrame) -> None:
        """Make the branch through a message current; this socket and the user's sync sockets
        (every process) hear `selected`."""
        try:
            leaf = await self.svc.db.write(
                lambda store: tree.select_branch(store, frame.conversation_id, self.user_id, frame.message_id))
        except NotFound:
            await self._refuse(FrameError(ErrorCode.NOT_FOUND, frames.NO_SUCH_MESSAGE, frame.client_id))
            return
        await self.sink.send(outgoing.selected(frame.conversation_id, leaf, frame.client_id))
        self.svc.bus.announce_selected(self.user_id, frame.conversation_id, leaf, self.sink)

    async def _refuse(self, e: FrameError) -> None:
        metrics.MESSAGES_REFUSED.labels(e.code.value).inc()
        await self.sink.send(outgoing.error(e.code, e.detail, e.client_id))

    async def _refuse_over_rate(self, frame: TurnFrame) -> bool:
        """Answer a message over the user's rate with rate_limited; False when, instead, the socket
        was closed because its client keeps ignoring that answer."""
        if not self.strikes.take():
            log.warning("closing a flooding socket (user %r): rate limit ignored", self.user_id)
            await self.channel.close(CloseCode.POLICY, "flooding")
            return False
        limit = self.svc.settings.rate_limit_per_minute
        await self._refuse(FrameError(ErrorCode.RATE_LIMITED, f"more than {limit} messages a minute; "
                                      "wait, then send it again", frame.client_id))
        return True

    async def _enqueue(self, frame: TurnFrame) -> None:
        # Up to max_waiting wait behind the turn in progress (which may not have been taken yet).
        room = self.svc.settings.max_waiting + (0 if self.turn is not None else 1)
        if len(self.waiting) >= room:
            await self._refuse(FrameError(
                ErrorCode.BUSY, f"{self.svc.settings.max_waiting} messages are already waiting; "
                "send this one again after a reply is done", frame.client_id))
            return
        self.waiting.append(frame)
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._work())

    def _cancel(self, frame: CancelFrame) -> None:
        if frame.message_id is None:
            if self.turn is not None:
                self.turn.cancel()
        elif frame.message_id:
            self.svc.bus.stop(self.user_id, frame.message_id, "cancelled")

    async def _resume(self, frame: ResumeFrame) -> None:
        """Follow a reply in flight from `after`, or answer with the stored one."""
        bus = self.svc.bus
        reply = await bus.locate(self.user_id, reply_id=frame.message_id, reply_to=frame.reply_to)
        if reply is not None:
            follower = (self.followers or {}).get(reply.id)
            if follower is not None and follower.active:
                follower.rewind(frame.after)
            else:
                follower = bus.follow(reply, self.sink, frame.after)
                self.adopt(follower)
            await follower.pump()
            return
        # Not in flight: stored by now, or never was (a reply leaves the bus only once stored).
        if frame.message_id is not None:
            message_id = frame.message_id
            stored = await self.svc.db.read(lambda store: store.message_of(self.user_id, message_id))
        else:
            reply_to = frame.reply_to or ""
            stored = await self.svc.db.read(lambda store: store.latest_reply(self.user_id, reply_to))
        if stored is None or stored.role != "assistant":
            await self._refuse(FrameError(ErrorCode.NOT_FOUND, frames.NO_SUCH_REPLY))
            return
        await self.sink.send(outgoing.done(stored))

    async def _history(self, frame: HistoryFrame) -> dict[str, Any]:
        conversation_id = frame.conversation_id or self.conversation_id
        if conversation_id is None:
            return outgoing.error(ErrorCode.INVALID, "history needs a conversation_id: this socket has no "
                                  "conversation yet")
        try:
            page = await self.svc.db.read(lambda store: tree.branch(
                store, conversation_id, self.user_id, frame.before, frame.limit, frame.leaf))
        except NotFound as e:
            missing = frames.NO_SUCH_MESSAGE if frame.leaf is not None and e.args == (frame.leaf,) \
                else frames.NO_SUCH_CONVERSATION
            return outgoing.error(ErrorCode.NOT_FOUND, missing)
        except InvalidBefore:
            return outgoing.error(ErrorCode.INVALID, frames.INVALID_BEFORE)
        return outgoing.history(conversation_id, page.messages, page.has_more, page.leaf_id, page.siblings)

    # -- turns ---------------------------------------------------------------------------------
    async def _work(self) -> None:
        """Run the waiting turns in order, then end (the next message starts a new worker)."""
        while self.waiting and not self.closing:
            frame = self.waiting.pop(0)
            self.turn = turn = TurnInProgress()
            try:
                if isinstance(frame, RegenerateFrame):
                    message = await self.runner.regenerate(frame, self, turn)
                else:
                    message = await self.runner.run(frame, self, self.conversation_id, turn)
                if message is not None:
                    self.conversation_id = message.conversation_id
            except Disconnected:
                pass
            except Exception:
                log.exception("turn failed (user %r)", self.user_id)
                with contextlib.suppress(Disconnected):
                    await self.sink.send(outgoing.error(ErrorCode.INTERNAL, "internal error", frame.client_id))
            finally:
                self.turn = None
