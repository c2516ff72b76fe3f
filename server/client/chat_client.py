"""`ChatClient`: the public operations and the life of the client; the work is done by its parts.

The connection opens sockets, the outbox sends (and sends again) what the client waits for, the
dispatcher applies the server's frames to it, and `Pending` keeps the books. The client adopts each
new socket and reads it until it closes, then reconnects or gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection

from .connection import Connection
from .dispatch import Dispatcher
from .entries import CURRENT, CurrentConversation, Entry, HistoryRequest, Target
from .errors import ChatError, ChatTimeout
from .outbox import Outbox
from .pending import Pending
from .results import Event, HistoryPage, Message, Reply, ReplyInFlight
from .stream import ReplyStream

log = logging.getLogger("server.client")


class ChatClient:
    """A chat.v1 client over one WebSocket that it reconnects when it drops.

    `url`: the server's `ws://…/ws`. `token`: the user's token; None in open mode, where the
    server mints one (kept in `.token` and presented on every reconnect: keep it to come back as
    the same user). `conversation_id`: the conversation to start in. `sync`: also hear the user's
    other sockets (`events()`). `timeout`: the default wait for a reply or an answer.
    `connect_timeout`: one connection attempt. `retries`, `backoff`, `max_backoff`: how many times,
    and how far apart (doubling, with jitter), a connection is tried again before `ConnectionFailed`.
    """

    def __init__(self, url: str, token: str | None = None, *, conversation_id: str | None = None,
                 sync: bool = False, timeout: float = 60.0, connect_timeout: float = 10.0, retries: int = 8,
                 backoff: float = 0.2, max_backoff: float = 5.0, headers: Mapping[str, str] | None = None,
                 origin: str | None = None, ping_interval: float | None = 20.0) -> None:
        self.url, self.sync, self.timeout, self.connect_timeout = url, sync, timeout, connect_timeout
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.headers, self.origin, self.ping_interval = dict(headers or {}), origin, ping_interval
        self._token = token
        self._user_id: str | None = None
        self._ready: dict[str, Any] = {}
        self._current = CurrentConversation(conversation_id)
        self._conn = Connection(self)
        self._pending = Pending()
        self._outbox = Outbox(self._conn, self._pending, self._current)
        self._dispatcher = Dispatcher(self, self._pending, self._outbox, self._current, self._conn.delay)
        self._reader: asyncio.Task[None] | None = None
        self._broken: ChatError | None = None
        self._closing = False
        self.reconnects = 0  # how many times the socket was opened again

    # -- identity and state
    @property
    def token(self) -> str | None:
        return self._token

    @property
    def user_id(self) -> str:
        if self._user_id is None:
            raise ChatError("closed", "not connected yet: use `async with ChatClient(...)` or `await connect()`")
        return self._user_id

    @property
    def conversation_id(self) -> str | None:
        """The current conversation: where a message without `conversation_id` goes."""
        return self._current.id

    @property
    def connected(self) -> bool:
        return self._conn.ws is not None and self._broken is None

    @property
    def ready(self) -> dict[str, Any]:
        """The last `ready` frame."""
        return dict(self._ready)

    @property
    def replies_in_flight(self) -> list[ReplyInFlight]:
        return [ReplyInFlight(r["conversation_id"], r["message_id"], r["reply_to"], int(r.get("seq", 0)))
                for r in self._ready.get("replies_in_flight") or []]

    def new_conversation(self) -> None:
        """The next message starts a new conversation, which becomes current."""
        self._current.id, self._current.new_next = None, True

    def use_conversation(self, conversation_id: str) -> None:
        """The next messages go to this conversation (one of this user's)."""
        self._current.id, self._current.new_next = conversation_id, False

    # -- lifecycle
    async def __aenter__(self) -> ChatClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the socket (trying again on connection failures, not on refusals) and read `ready`."""
        ws, ready = await self._conn.open_first()
        asked = self._current.id
        await self._adopt(ws, ready)
        if asked is not None and ready.get("conversation_id") is None:
            self._conn.ws = None
            await ws.close()
            raise ChatError("not_found", f"conversation {asked} is not one of this user's")
        self._reader = asyncio.create_task(self._read_forever(), name="chat-client-reader")

    async def close(self) -> None:
        """Close the socket; replies still awaited fail with code `closed`."""
        self._closing = True
        if self._conn.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self._outbox.cancel_resends()
        self._conn.ws = None
        self._pending.fail_all(ChatError("closed", "the client was closed"))
        self._dispatcher.end_events()

    # -- the public operations
    def stream(self, content: str, *, conversation_id: Target = CURRENT, client_id: str | None = None,
               timeout: float | None = None) -> ReplyStream:
        """Send a message; iterate the result for the reply's pieces, or await it for the Reply.
        The message is sent when the iteration (or the await) begins.

        `conversation_id`: absent for the current conversation, None for a new one.
        `client_id`: the idempotency key (a fresh one when absent).
        """
        async def begin() -> Entry:
            self._check_usable()
            entry = Entry("message", client_id=client_id or f"py-{uuid.uuid4().hex}", content=content,
                          target=conversation_id)
            await self._outbox.submit(entry)
            return entry

        return ReplyStream(self, begin, self.timeout if timeout is None else timeout)

    async def send(self, content: str, *, conversation_id: Target = CURRENT, client_id: str | None = None,
                   timeout: float | None = None) -> Reply:
        """Send a message and wait for its stored reply."""
        return await self.stream(content, conversation_id=conversation_id, client_id=client_id, timeout=timeout)

    def resume(self, message_id: str | None = None, *, reply_to: str | None = None, after: int = 0,
               timeout: float | None = None) -> ReplyStream:
        """Follow a reply of this user, by its id or by the user message it answers; `after`: the
        last seq you have. Iterate it for the pieces after `after`, or await it for the Reply."""
        if (message_id is None) == (reply_to is None):
            raise ValueError("resume takes message_id or reply_to, not both")

        async def begin() -> Entry:
            self._check_usable()
            entry = Entry("resume", message_id=message_id, reply_to=reply_to, after=after)
            await self._outbox.submit(entry)
            return entry

        return ReplyStream(self, begin, self.timeout if timeout is None else timeout)

    async def cancel(self, message_id: str | None = None) -> None:
        """Stop the current turn's reply on this socket, or the reply `message_id` wherever it is."""
        frame: dict[str, Any] = {"type": "cancel"}
        if message_id is not None:
            frame["message_id"] = message_id
        self._check_usable()
        async with self._conn.send_lock:
            await self._conn.send(frame)

    async def history_page(self, conversation_id: str | None = None, *, before: str | None = None,
                           limit: int | None = None, timeout: float | None = None) -> HistoryPage:
        """One page of a conversation (default: the current one), oldest first."""
        conversation_id = conversation_id or self._current.id
        if conversation_id is None:
            raise ValueError("no conversation yet: pass conversation_id")
        frame: dict[str, Any] = {"type": "history", "conversation_id": conversation_id}
        if before is not None:
            frame["before"] = before
        if limit is not None:
            frame["limit"] = limit
        self._check_usable()
        request = HistoryRequest(frame)
        async with self._conn.send_lock:
            self._pending.expect("history", request)
            await self._conn.send(frame)
        wait = self.timeout if timeout is None else timeout
        try:
            answer = await asyncio.wait_for(asyncio.shield(request.future), wait)
        except TimeoutError:
            raise ChatTimeout(f"no answer within {wait:g}s to history of {conversation_id}") from None
        finally:
            self._pending.unexpect("history", request)
        return HistoryPage(answer["conversation_id"], [Message.from_wire(m) for m in answer["messages"]],
                           bool(answer.get("has_more")))

    async def history(self, conversation_id: str | None = None, *, before: str | None = None,
                      limit: int | None = None, timeout: float | None = None) -> list[Message]:
        """The newest `limit` messages (server default 50) older than `before`, oldest first."""
        page = await self.history_page(conversation_id, before=before, limit=limit, timeout=timeout)
        return page.messages

    async def events(self) -> AsyncIterator[Event]:
        """What happens on the user's other sockets (needs `sync=True`); ends when the client closes."""
        if not self.sync:
            raise ValueError("events() needs ChatClient(..., sync=True)")
        while True:
            event = await self._dispatcher.events.get()
            if event is None:
                return
            yield event

    # -- inside
    def _check_usable(self) -> None:
        if self._broken is not None:
            raise self._broken
        if self._closing:
            raise ChatError("closed", "the client was closed")
        if self._reader is None:
            raise ChatError("closed", "not connected: use `async with ChatClient(...)` or `await connect()`")

    def _forget(self, entry: Entry) -> None:
        """A reader stopped waiting for `entry` (its stream timed out)."""
        self._pending.forget(entry)

    async def _adopt(self, ws: ClientConnection, ready: dict[str, Any]) -> None:
        """Take a fresh socket into use, and send on it what the old one left unanswered."""
        async with self._conn.send_lock:
            if self._user_id is not None and ready["user_id"] != self._user_id:
                log.warning("reconnected as another user (%s, was %s)", ready["user_id"], self._user_id)
            self._conn.adopt(ws)
            self._ready = ready
            self._user_id = ready["user_id"]
            self._token = ready.get("token") or self._token
            if self._current.id is not None and ready.get("conversation_id") is None:
                self._dispatcher.expect_not_found()  # the error `not_found` that follows is about this
                self._current.id = None
            elif ready.get("conversation_id"):
                self._current.id = ready["conversation_id"]
            await self._outbox.send_again(ready)

    async def _read_forever(self) -> None:
        while True:
            ws = self._conn.ws
            assert ws is not None
            code = await self._conn.read(ws, self._dispatcher.dispatch_raw)
            if self._closing:
                return
            async with self._conn.send_lock:
                self._conn.ws = None
            error = self._conn.closed_for_good(ws, code)
            if error is not None:
                self._give_up(error)
                return
            log.info("socket closed (code %s); reconnecting", code)
            try:
                ws, ready = await self._conn.open_again()
                self.reconnects += 1
                await self._adopt(ws, ready)
            except ChatError as e:
                self._give_up(e)
                return

    def _give_up(self, error: ChatError) -> None:
        self._broken = error
        self._pending.fail_all(error)
        self._dispatcher.end_events()
