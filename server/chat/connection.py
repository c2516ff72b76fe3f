"""One socket: a reader that parses frames and a worker that runs turns one at a time.

The connection holds the database for its whole life and runs a unit of work only at a turn's
commit points, so waiting on the client or the model holds no connection. An idle socket holds
no task and no event besides its reader: the worker exists while messages wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from server import PROTOCOL, metrics
from server.auth import Identity
from server.chat.backends import ChatTurn, ContextMessage
from server.chat.limits import TokenBucket
from server.chat.replies import Draft, stream_reply
from server.chat.services import Services
from server.chat.turns import Accepted, ConversationNotFound, TurnControl, accept_message, store_reply
from server.db.store import InvalidBefore, Message, NotFound, new_id
from server.db.uow import DatabaseUnavailable
from server.protocol import frames
from server.protocol.codes import CloseCode, ErrorCode
from server.protocol.frames import CancelFrame, FrameError, HistoryFrame, MessageFrame
from server.web.socket import Disconnected, Socket

log = logging.getLogger(__name__)

UNAVAILABLE_DETAIL = "the database could not take the message; it was not stored: send it again"
DELETED_DETAIL = "the conversation was deleted; its reply was stopped"


class ChatConnection:
    def __init__(self, sock: Socket, services: Services, identity: Identity):
        self.sock = sock
        self.svc = services
        self.identity = identity
        self.user_id = identity.user_id
        self.conversation_id: str | None = None
        self.waiting: list[MessageFrame] = []  # at most max_waiting + 1: a list is the smallest queue
        self.turn: TurnControl | None = None
        self.closing = False
        self.gone: asyncio.Event | None = None  # made when a duplicate waits on another socket's reply
        self.worker: asyncio.Task[None] | None = None
        rate = services.settings.max_frames_per_second
        self.frame_rate = TokenBucket(rate, 2 * rate)
        # Refusals for the user's message rate; running out of these (more than flood_close_after
        # a minute, sustained) means the client ignores rate_limited: it is closed.
        strikes = services.settings.flood_close_after
        self.strikes = TokenBucket(strikes / 60, strikes)

    # -- lifecycle -----------------------------------------------------------------------------
    async def serve(self, requested_conversation: str | None) -> None:
        hub = self.svc.hub
        await self.sock.accept()
        hub.add(self)
        try:
            start = await self._resolve_start(requested_conversation)
            await self.sock.send({"type": "ready", "protocol": PROTOCOL, "user_id": self.user_id,
                                  "conversation_id": self.conversation_id,
                                  **({"token": self.identity.minted_token} if self.identity.minted_token else {})})
            if start is not None:
                await self.sock.send(start)
            await self._read()
        except Disconnected:
            pass
        except Exception:
            log.exception("socket handler failed (user %s)", self.user_id)
            await self.sock.close(CloseCode.INTERNAL)
        finally:
            self._leave("interrupted")
            if self.worker is not None:
                # Shielded: even if this handler is cancelled, the reply in flight gets stored.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.worker)
            hub.remove(self)

    async def shut_down(self) -> None:
        """Server shutdown: the reply in flight is stored as interrupted, then close with 1001."""
        self._leave("interrupted")
        if self.worker is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.worker)
        await self.sock.close(CloseCode.GOING_AWAY, "server shutting down")

    def _leave(self, reason: str) -> None:
        self.closing = True
        if self.gone is not None:
            self.gone.set()
        self.waiting.clear()  # never acknowledged, so dropping them loses nothing
        if self.turn is not None:
            self.turn.stop(reason)

    async def _resolve_start(self, requested: str | None) -> dict[str, Any] | None:
        if requested is None:
            return None
        if not frames.storable(requested):
            return frames.error(ErrorCode.NOT_FOUND, frames.NO_SUCH_CONVERSATION)
        try:
            owned = await self.svc.db.read(lambda store: store.owns_conversation(requested, self.user_id))
        except DatabaseUnavailable:
            return frames.error(ErrorCode.UNAVAILABLE, "the database is unavailable; try again")
        if owned:
            self.conversation_id = requested
            return None
        return frames.error(ErrorCode.NOT_FOUND, frames.NO_SUCH_CONVERSATION)

    # -- reading -------------------------------------------------------------------------------
    async def _read(self) -> None:
        max_chars = self.svc.settings.max_message_chars
        while True:
            incoming = await self.sock.receive()
            if self.identity.expired():
                await self.sock.close(CloseCode.POLICY, "token expired")
                return
            if not self.frame_rate.take():
                log.warning("closing a flooding socket (user %s): over %g frames/s", self.user_id,
                            self.svc.settings.max_frames_per_second)
                await self.sock.close(CloseCode.POLICY, "flooding")
                return
            if incoming.text is None:
                await self._refuse(FrameError(ErrorCode.INVALID, "binary frames are not accepted; send text"))
                continue
            try:
                frame = frames.parse(incoming.text, max_chars)
            except FrameError as e:
                await self._refuse(e)
                continue
            if isinstance(frame, MessageFrame):
                if self.svc.limits.allow_message(self.user_id):
                    await self._enqueue(frame)
                elif not await self._refuse_over_rate(frame):
                    return  # closed for flooding
            elif isinstance(frame, CancelFrame):
                if self.turn is not None:
                    self.turn.stop("cancelled")
            elif isinstance(frame, HistoryFrame):
                await self.sock.send(await self._history(frame))

    async def _refuse(self, e: FrameError) -> None:
        metrics.MESSAGES_REFUSED.labels(e.code.value).inc()
        await self.sock.send(frames.error(e.code, e.detail, e.client_id))

    async def _refuse_over_rate(self, frame: MessageFrame) -> bool:
        """Answer a message over the user's rate with rate_limited; False when, instead, the socket
        was closed because its client keeps ignoring that answer."""
        if not self.strikes.take():
            log.warning("closing a flooding socket (user %s): rate limit ignored", self.user_id)
            await self.sock.close(CloseCode.POLICY, "flooding")
            return False
        limit = self.svc.settings.rate_limit_per_minute
        await self._refuse(FrameError(ErrorCode.RATE_LIMITED, f"more than {limit} messages a minute; "
                                      "wait, then send it again", frame.client_id))
        return True

    async def _enqueue(self, frame: MessageFrame) -> None:
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

    async def _history(self, frame: HistoryFrame) -> dict[str, Any]:
        try:
            page, has_more = await self.svc.db.read(
                lambda store: store.history(frame.conversation_id, self.user_id, frame.before, frame.limit))
        except NotFound:
            return frames.error(ErrorCode.NOT_FOUND, frames.NO_SUCH_CONVERSATION)
        except InvalidBefore:
            return frames.error(ErrorCode.INVALID, frames.INVALID_BEFORE)
        except DatabaseUnavailable:
            return frames.error(ErrorCode.UNAVAILABLE, "the database is unavailable; try again")
        return {"type": "history", "conversation_id": frame.conversation_id,
                "messages": [m.to_wire() for m in page], "has_more": has_more}

    # -- turns ---------------------------------------------------------------------------------
    async def _work(self) -> None:
        """Run the waiting turns in order, then end (the next message starts a new worker)."""
        while self.waiting and not self.closing:
            frame = self.waiting.pop(0)
            self.turn = control = TurnControl()
            try:
                await self._turn(frame, control)
            except Disconnected:
                pass
            except Exception:
                log.exception("turn failed (user %s)", self.user_id)
                with contextlib.suppress(Disconnected):
                    await self.sock.send(frames.error(ErrorCode.INTERNAL, "internal error", frame.client_id))
            finally:
                self.turn = None

    async def _turn(self, frame: MessageFrame, control: TurnControl) -> None:
        received_at = time.perf_counter()
        try:
            accepted = await accept_message(self.svc.db, self.user_id, frame, self.conversation_id)
        except ConversationNotFound:
            await self._refuse(FrameError(ErrorCode.NOT_FOUND, frames.NO_SUCH_CONVERSATION, frame.client_id))
            return
        except DatabaseUnavailable:
            log.warning("user message not stored: database unavailable (user %s)", self.user_id, exc_info=True)
            metrics.TURNS.labels("unavailable").inc()
            await self._refuse(FrameError(ErrorCode.UNAVAILABLE, UNAVAILABLE_DETAIL, frame.client_id))
            return
        message = accepted.message
        self.conversation_id = message.conversation_id
        await self.sock.send({"type": "ack", "client_id": message.client_id,
                              "conversation_id": message.conversation_id, "message_id": message.id,
                              "duplicate": accepted.duplicate})
        await self._reply(accepted, control, received_at)

    async def _reply(self, accepted: Accepted, control: TurnControl, received_at: float) -> None:
        hub, message = self.svc.hub, accepted.message
        duplicate = accepted.duplicate
        while True:
            if duplicate:
                other = hub.in_flight(message.id)
                if other is not None:  # streaming elsewhere: wait for it, then look again
                    await self._wait_for(other.finished)
                    continue
                if await self._send_stored_reply(message):
                    return
            entry = hub.claim(message.id, message.conversation_id, control.stop)
            if entry is None:
                duplicate = True
                continue
            stored: Message | None = None
            try:
                stored = await self._generate(message, control, received_at)
            finally:
                hub.release(entry, stored)
            return

    async def _wait_for(self, finished: asyncio.Future[Message | None]) -> None:
        """Wait for a reply another socket is generating. A cancel here does not stop that reply
        (it is not this socket's); only this socket going away ends the wait."""
        if self.gone is None:
            self.gone = asyncio.Event()
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            await asyncio.wait({finished, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if self.closing:
            raise Disconnected()

    async def _send_stored_reply(self, message: Message) -> bool:
        """Answer a duplicate from its stored final reply; False when it needs a new one."""
        try:
            replies = await self.svc.db.read(lambda store: store.replies_to(message.id))
        except DatabaseUnavailable:
            await self.sock.send(frames.error(ErrorCode.UNAVAILABLE, "the database is unavailable; send it again",
                                              message.client_id))
            return True
        final = next((r for r in reversed(replies) if r.status != "interrupted"), None)
        if final is None:
            return False
        await self.sock.send(self._done(final))
        return True

    async def _generate(self, message: Message, control: TurnControl, received_at: float) -> Message | None:
        draft = Draft(new_id(), received_at)
        status, detail = "interrupted", None
        try:
            await self.sock.send({"type": "start", "conversation_id": message.conversation_id,
                                  "message_id": draft.reply_id, "reply_to": message.id})
            turn = ChatTurn(message.conversation_id, message.content, await self._context(message), draft.stats)
            status, detail = await stream_reply(self.svc.backend, turn, draft, self._send_delta(draft.reply_id),
                                                control, self.svc.settings.llm_timeout_s)
        except Disconnected:
            status = "interrupted"
        except DatabaseUnavailable:
            status, detail = "error", "the conversation could not be read from the database"
        if status == "deleted":
            with contextlib.suppress(Disconnected):
                await self.sock.send(frames.error(ErrorCode.NOT_FOUND, DELETED_DETAIL, message.client_id))
            return None
        try:
            stored = await asyncio.shield(store_reply(self.svc.db, self.user_id, message, draft.reply_id,
                                                      draft.content, status, draft.meta(detail)))
        except DatabaseUnavailable:
            log.error("reply %s to %s not stored: database unavailable", draft.reply_id, message.id, exc_info=True)
            metrics.TURNS.labels("unavailable").inc()
            await self.sock.send(frames.error(
                ErrorCode.UNAVAILABLE, "the reply could not be stored; send the message again with the same "
                "client_id to get it", message.client_id))
            return None
        metrics.TURNS.labels(status).inc()
        if stored is None:  # the conversation was deleted while the reply was being stored
            await self.sock.send(frames.error(ErrorCode.NOT_FOUND, DELETED_DETAIL, message.client_id))
        elif status != "interrupted":
            await self.sock.send(self._done(stored))
        return stored

    def _send_delta(self, reply_id: str) -> Callable[[str], Awaitable[None]]:
        async def send(piece: str) -> None:
            await self.sock.send({"type": "delta", "message_id": reply_id, "content": piece})

        return send

    async def _context(self, message: Message) -> list[ContextMessage]:
        wanted = self.svc.backend.context_messages
        if not wanted:
            return []
        page, _ = await self.svc.db.read(lambda store: store.page(message.conversation_id, message.seq, wanted))
        return [ContextMessage(m.role, m.content, m.status) for m in page]

    @staticmethod
    def _done(reply: Message) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "done", "conversation_id": reply.conversation_id, "message_id": reply.id,
                                 "status": reply.status, "content": reply.content}
        if reply.status == "error":
            frame["error"] = reply.error or "the reply failed"
        return frame
