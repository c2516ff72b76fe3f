"""An asyncio client of the chat.v1 protocol that never loses what it sent.

    from server.client import ChatClient

    async with ChatClient("ws://127.0.0.1:8000/ws") as chat:     # no token: open mode mints one
        reply = await chat.send("hello")                          # waits for `done`: a Reply
        async for piece in chat.stream("tell me more"):           # the reply's text, piece by piece
            print(piece, end="")
        messages = await chat.history(reply.conversation_id)      # oldest first

Every message gets a `client_id` (the server's idempotency key). When the socket drops, the client
reconnects with backoff and the same token, sends again what was not acknowledged, and follows
again what was streaming: with `resume` from the last `seq` it has when the server lists the reply
in `ready.replies_in_flight`, else by sending the acknowledged `client_id` again (the server answers
`ack` duplicate, then the stored reply or a freshly generated one). Pieces already given to a
`stream()` are never given twice: deltas of one reply are deduplicated by `seq` (counted by the
client when a server sends none), and of a regenerated reply only the text beyond what was given
is passed on. `Reply.content` is always the stored reply.

Errors are `ChatError`s carrying the contract's code (`invalid`, `too_large`, `not_found`, `busy`,
`rate_limited`, `unavailable`, `internal`) or one of the client's own: `refused` (`Refused`: HTTP
403/429 or close 1008/1013), `connection` (`ConnectionFailed`: no server after the retries),
`timeout` (`ChatTimeout`, also a `TimeoutError`), `closed`. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

__all__ = [
    "ChatClient", "ChatError", "ChatTimeout", "ConnectionFailed", "Event", "HistoryPage", "Message",
    "Refused", "Reply", "ReplyInFlight", "ReplyStream",
]

log = logging.getLogger("server.client")

# Close codes after which trying again cannot help: the server refuses this client or its frames.
_FATAL_CLOSE: Final = {1007: "invalid UTF-8 sent", 1008: "policy: auth or origin refused, token expired, or flooding",
                       1009: "a frame over the size limit sent"}
_REFUSAL_REASONS: Final = {
    403: "HTTP 403: the token or the origin was refused",
    429: "HTTP 429: too many new users from this address, try again later",
    1008: "close 1008: the token or the origin was refused (policy)",
    1013: "close 1013: try again later (too many sockets for this user, or too many new users from this address)",
}


# -- errors -----------------------------------------------------------------------------------------
class ChatError(Exception):
    """An `error` frame of the server, or a failure of the client; `code` says which."""

    def __init__(self, code: str, detail: str, *, client_id: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail, self.client_id = code, detail, client_id


class Refused(ChatError):
    """The server refused the connection: `status` (HTTP) or `close_code` says how."""

    def __init__(self, detail: str, *, status: int | None = None, close_code: int | None = None) -> None:
        super().__init__("refused", detail)
        self.status, self.close_code = status, close_code


class ConnectionFailed(ChatError):
    """No server answered after the configured retries, or the connection was lost for good."""

    def __init__(self, detail: str) -> None:
        super().__init__("connection", detail)


class ChatTimeout(ChatError, TimeoutError):
    """A wait ran out; the message says what it waited for."""

    def __init__(self, detail: str, *, client_id: str | None = None) -> None:
        super().__init__("timeout", detail, client_id=client_id)


# -- values -----------------------------------------------------------------------------------------
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


class _Absent:
    pass


_CURRENT: Final = _Absent()  # the client's current conversation (the server's "absent")
Target: TypeAlias = str | None | _Absent  # a conversation id, None for a new one, or _CURRENT


# -- one reply the client waits for ---------------------------------------------------------------
class _Entry:
    """A message sent by this client (kind "message") or a reply it follows (kind "resume")."""

    def __init__(self, kind: str, *, client_id: str | None = None, content: str | None = None,
                 target: Target = _CURRENT, message_id: str | None = None, reply_to: str | None = None,
                 after: int = 0) -> None:
        self.kind, self.client_id, self.content, self.target = kind, client_id, content, target
        self.wire_target: Target = _CURRENT  # what the first send put on the wire
        self.resolved = False
        self.sent_gen = -1  # the connection generation it was last sent on
        self.acked = False
        self.user_message_id = reply_to
        self.conversation_id: str | None = None
        self.reply_id = message_id
        self.seq = after  # the last seq of reply_id that this client has
        self.text = ""  # the text of reply_id's pieces that this client has (after `after`)
        self.emitted = 0  # characters given to the reader of the stream
        self.gap = False  # a seq was skipped: wait for done's content
        self.emit_rest_on_done = after == 0
        self.bare_done_expected = False  # a duplicate ack or a resume may be answered by done alone
        self.resends = 0
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue()
        self.future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    def describe(self) -> str:
        parts = [f"client_id={self.client_id}"] if self.client_id else []
        parts += [f"message_id={self.user_message_id}"] if self.user_message_id else []
        parts += [f"reply {self.reply_id}"] if self.reply_id else []
        return ("message " if self.kind == "message" else "followed reply ") + ", ".join(parts)

    def on_start(self, frame: Mapping[str, Any]) -> None:
        self.bare_done_expected = False
        self.conversation_id = frame.get("conversation_id", self.conversation_id)
        self.user_message_id = frame.get("reply_to") or self.user_message_id
        if frame["message_id"] != self.reply_id:  # a reply not seen before (a regenerated one): count anew
            self.reply_id, self.seq, self.text, self.gap = frame["message_id"], 0, "", False

    def on_delta(self, seq: Any, content: str) -> None:
        n = seq if isinstance(seq, int) else self.seq + 1  # a server without seq: count them here
        if n <= self.seq:
            return  # already have it (a replay after resume or resend)
        if n > self.seq + 1:
            self.gap = True  # never paper over a hole: the rest comes from done's content
        self.seq = n
        if not self.gap:
            self.text += content
            self._emit(self.text)

    def _emit(self, text: str) -> None:
        if len(text) > self.emitted:
            self.pieces.put_nowait(text[self.emitted:])
            self.emitted = len(text)

    def finish(self, frame: Mapping[str, Any]) -> None:
        if self.emit_rest_on_done:
            self._emit(frame.get("content", ""))
        reply = Reply(content=frame.get("content", ""), status=frame.get("status", "complete"),
                      message_id=frame["message_id"], reply_to=self.user_message_id,
                      conversation_id=frame.get("conversation_id") or self.conversation_id or "",
                      client_id=self.client_id, error=frame.get("error"))
        if not self.future.done():
            self.future.set_result(reply)
        self.pieces.put_nowait(None)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)
            self.future.exception()  # retrieved: a stream nobody awaits logs no warning
        self.pieces.put_nowait(None)


class _Request:
    """A `history` request waiting for its answer."""

    def __init__(self, frame: dict[str, Any]) -> None:
        self.frame = frame
        self.future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()


class ReplyStream:
    """The reply to one message (or a followed reply): iterate for its pieces, or await it.

    `async for piece in stream` gives the text in order, exactly once; afterwards `stream.reply`
    is the stored `Reply`. `await stream` waits for the reply (also after a `break` out of the loop).
    """

    def __init__(self, client: ChatClient, begin: Callable[[], Awaitable[_Entry]], timeout: float) -> None:
        self._client, self._begin, self._timeout = client, begin, timeout
        self._entry: _Entry | None = None
        self._deadline = 0.0
        self.reply: Reply | None = None

    @property
    def message_id(self) -> str | None:
        """The reply's id, once its `start` came (a regenerated reply has a new one)."""
        return self._entry.reply_id if self._entry else None

    @property
    def reply_to(self) -> str | None:
        """The id of the user message, once acknowledged."""
        return self._entry.user_message_id if self._entry else None

    @property
    def client_id(self) -> str | None:
        """The message's idempotency key, once sent."""
        return self._entry.client_id if self._entry else None

    @property
    def seq(self) -> int:
        """The last `seq` received of the reply (what `resume(after=...)` takes)."""
        return self._entry.seq if self._entry else 0

    async def cancel(self) -> None:
        """Stop this reply (the server sends `done` with status cancelled)."""
        await self._client.cancel(self.message_id)

    def __aiter__(self) -> ReplyStream:
        return self

    def __await__(self) -> Generator[Any, None, Reply]:
        return self._drain().__await__()

    async def _drain(self) -> Reply:
        async for _ in self:
            pass
        assert self.reply is not None
        return self.reply

    async def __anext__(self) -> str:
        loop = asyncio.get_running_loop()
        if self._entry is None:
            self._entry = await self._begin()
            self._deadline = loop.time() + self._timeout
        entry = self._entry
        if entry.future.done() and entry.pieces.empty():
            self.reply = entry.future.result()  # raises the entry's ChatError
            raise StopAsyncIteration
        try:  # what already came is given even when the reader was slow
            piece = entry.pieces.get_nowait() if not entry.pieces.empty() else await asyncio.wait_for(
                entry.pieces.get(), max(0.0, self._deadline - loop.time()))
        except TimeoutError:
            self._client._forget(entry)
            error = ChatTimeout(f"no `done` within {self._timeout:g}s for {entry.describe()}",
                                client_id=entry.client_id)
            entry.fail(error)
            raise error from None
        if piece is None:
            self.reply = entry.future.result()
            raise StopAsyncIteration
        return piece


# -- the client -----------------------------------------------------------------------------------
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
        self._conversation_id = conversation_id
        self._new_conversation_next = False
        self._ready: dict[str, Any] = {}
        self._ws: ClientConnection | None = None
        self._gen = 0
        self._send_lock = asyncio.Lock()
        self._entries: list[_Entry] = []
        self._awaiting: list[tuple[str, Any]] = []  # ("history", _Request) | ("resume", _Entry), in send order
        self._foreign: set[str] = set()  # reply ids of other sockets (sync)
        self._events: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=10_000)
        self._swallow_not_found = False
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
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
        return self._conversation_id

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._broken is None

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
        self._conversation_id, self._new_conversation_next = None, True

    def use_conversation(self, conversation_id: str) -> None:
        """The next messages go to this conversation (one of this user's)."""
        self._conversation_id, self._new_conversation_next = conversation_id, False

    # -- lifecycle
    async def __aenter__(self) -> ChatClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the socket (trying again on connection failures, not on refusals) and read `ready`."""
        last: ChatError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self._delay(attempt - 1))
            try:
                ws, ready = await self._open()
            except ConnectionFailed as e:
                last = e
                continue
            asked = self._conversation_id
            await self._adopt(ws, ready)
            if asked is not None and ready.get("conversation_id") is None:
                self._ws = None
                await ws.close()
                raise ChatError("not_found", f"conversation {asked} is not one of this user's")
            self._reader = asyncio.create_task(self._read_forever(), name="chat-client-reader")
            return
        detail = last.detail if last else ""
        raise ConnectionFailed(f"no chat server at {self.url} after {self.retries + 1} attempts: {detail}")

    async def close(self) -> None:
        """Close the socket; replies still awaited fail with code `closed`."""
        self._closing = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        for task in list(self._tasks):
            task.cancel()
        self._ws = None
        self._fail_all(ChatError("closed", "the client was closed"))
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(None)

    # -- the public operations
    def stream(self, content: str, *, conversation_id: Target = _CURRENT, client_id: str | None = None,
               timeout: float | None = None) -> ReplyStream:
        """Send a message; iterate the result for the reply's pieces, or await it for the Reply.
        The message is sent when the iteration (or the await) begins.

        `conversation_id`: absent for the current conversation, None for a new one.
        `client_id`: the idempotency key (a fresh one when absent).
        """
        return ReplyStream(self, lambda: self._submit(content, conversation_id, client_id),
                           self.timeout if timeout is None else timeout)

    async def send(self, content: str, *, conversation_id: Target = _CURRENT, client_id: str | None = None,
                   timeout: float | None = None) -> Reply:
        """Send a message and wait for its stored reply."""
        return await self.stream(content, conversation_id=conversation_id, client_id=client_id, timeout=timeout)

    def resume(self, message_id: str | None = None, *, reply_to: str | None = None, after: int = 0,
               timeout: float | None = None) -> ReplyStream:
        """Follow a reply of this user, by its id or by the user message it answers; `after`: the
        last seq you have. Iterate it for the pieces after `after`, or await it for the Reply."""
        if (message_id is None) == (reply_to is None):
            raise ValueError("resume takes message_id or reply_to, not both")

        async def begin() -> _Entry:
            self._check_usable()
            entry = _Entry("resume", message_id=message_id, reply_to=reply_to, after=after)
            self._entries.append(entry)
            async with self._send_lock:
                if self._ws is not None and entry.sent_gen != self._gen:
                    await self._send_entry(entry)
            return entry

        return ReplyStream(self, begin, self.timeout if timeout is None else timeout)

    async def cancel(self, message_id: str | None = None) -> None:
        """Stop the current turn's reply on this socket, or the reply `message_id` wherever it is."""
        frame: dict[str, Any] = {"type": "cancel"}
        if message_id is not None:
            frame["message_id"] = message_id
        await self._send_now(frame)

    async def history_page(self, conversation_id: str | None = None, *, before: str | None = None,
                           limit: int | None = None, timeout: float | None = None) -> HistoryPage:
        """One page of a conversation (default: the current one), oldest first."""
        conversation_id = conversation_id or self._conversation_id
        if conversation_id is None:
            raise ValueError("no conversation yet: pass conversation_id")
        frame: dict[str, Any] = {"type": "history", "conversation_id": conversation_id}
        if before is not None:
            frame["before"] = before
        if limit is not None:
            frame["limit"] = limit
        self._check_usable()
        request = _Request(frame)
        async with self._send_lock:
            self._awaiting.append(("history", request))
            await self._send_frame(frame)
        wait = self.timeout if timeout is None else timeout
        try:
            answer = await asyncio.wait_for(asyncio.shield(request.future), wait)
        except TimeoutError:
            raise ChatTimeout(f"no answer within {wait:g}s to history of {conversation_id}") from None
        finally:
            with contextlib.suppress(ValueError):
                self._awaiting.remove(("history", request))
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
            event = await self._events.get()
            if event is None:
                return
            yield event

    # -- sending
    def _check_usable(self) -> None:
        if self._broken is not None:
            raise self._broken
        if self._closing:
            raise ChatError("closed", "the client was closed")
        if self._reader is None:
            raise ChatError("closed", "not connected: use `async with ChatClient(...)` or `await connect()`")

    async def _submit(self, content: str, target: Target, client_id: str | None) -> _Entry:
        self._check_usable()
        entry = _Entry("message", client_id=client_id or f"py-{uuid.uuid4().hex}", content=content, target=target)
        self._entries.append(entry)
        async with self._send_lock:
            if self._ws is not None and entry.sent_gen != self._gen:
                await self._send_entry(entry)
        return entry

    async def _send_now(self, frame: dict[str, Any]) -> None:
        self._check_usable()
        async with self._send_lock:
            await self._send_frame(frame)

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        """Lost with the socket when it drops; whatever must not be lost is sent again on reconnect."""
        ws = self._ws
        if ws is None:
            return
        try:
            await asyncio.wait_for(ws.send(json.dumps(frame, ensure_ascii=False)), self.connect_timeout)
        except ConnectionClosed:
            pass
        except TimeoutError:  # the peer reads nothing: a dead network; the reader reconnects
            log.warning("a frame could not be sent within %gs; dropping the connection", self.connect_timeout)
            ws.transport.abort()

    async def _send_entry(self, entry: _Entry) -> None:
        entry.sent_gen = self._gen
        if entry.kind == "resume":
            await self._send_resume(entry)
            return
        if entry.acked:
            entry.bare_done_expected = True  # answered by ack duplicate, then done alone or a new reply
        await self._send_frame(self._message_frame(entry))

    def _message_frame(self, entry: _Entry) -> dict[str, Any]:
        """The same frame every time: its conversation is chosen once, at the first send."""
        if not entry.resolved:
            entry.wire_target, entry.resolved = self._resolve(entry.target), True
        frame: dict[str, Any] = {"type": "message", "content": entry.content, "client_id": entry.client_id}
        if not isinstance(entry.wire_target, _Absent):
            frame["conversation_id"] = entry.wire_target
        return frame

    def _resolve(self, target: Target) -> Target:
        """An id, None (a new conversation), or _CURRENT (left out: the socket's current one)."""
        if not isinstance(target, _Absent):
            return target
        if self._new_conversation_next:
            self._new_conversation_next = False
            return None
        return self._conversation_id if self._conversation_id is not None else _CURRENT

    async def _send_resume(self, entry: _Entry) -> None:
        frame: dict[str, Any] = {"type": "resume", "after": entry.seq if entry.reply_id else 0}
        if entry.reply_id is not None:
            frame["message_id"] = entry.reply_id
        else:
            frame["reply_to"] = entry.user_message_id
        entry.bare_done_expected = True
        self._awaiting.append(("resume", entry))
        await self._send_frame(frame)

    # -- connecting
    def _delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)

    async def _open(self) -> tuple[ClientConnection, dict[str, Any]]:
        params: dict[str, str] = {}
        if self._conversation_id:
            params["conversation_id"] = self._conversation_id
        if self.sync:
            params["sync"] = "1"
        url = self.url + (("&" if "?" in self.url else "?") + urlencode(params) if params else "")
        headers = dict(self.headers)
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            ws = await connect(url, additional_headers=headers, origin=self.origin,  # type: ignore[arg-type]
                               open_timeout=self.connect_timeout, ping_interval=self.ping_interval,
                               close_timeout=2, max_size=64 * 2**20)
        except InvalidStatus as e:
            status = e.response.status_code
            if status in _REFUSAL_REASONS:
                raise Refused(f"{self.url} refused the connection: {_REFUSAL_REASONS[status]}", status=status) from e
            if status >= 500:
                raise ConnectionFailed(f"{self.url} answered the handshake with HTTP {status}") from e
            raise Refused(f"{self.url} refused the connection: HTTP {status}", status=status) from e
        except (OSError, TimeoutError, InvalidHandshake) as e:
            raise ConnectionFailed(f"cannot connect to {self.url}: {e!r}") from e
        try:
            ready = json.loads(await asyncio.wait_for(ws.recv(), self.connect_timeout))
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            reason = e.rcvd.reason if e.rcvd else ""
            if code in _REFUSAL_REASONS:
                explained = _REFUSAL_REASONS[code] + (f" ({reason})" if reason else "")
                raise Refused(f"{self.url} refused the connection: {explained}", close_code=code) from e
            raise ConnectionFailed(f"{self.url} closed the connection before `ready` (code {code})") from e
        except TimeoutError:
            await ws.close()
            raise ConnectionFailed(f"no `ready` from {self.url} within {self.connect_timeout:g}s") from None
        if not isinstance(ready, dict) or ready.get("type") != "ready":
            await ws.close()
            raise ChatError("internal", f"expected `ready` first, got {str(ready)[:200]}")
        return ws, ready

    async def _adopt(self, ws: ClientConnection, ready: dict[str, Any]) -> None:
        """Take a fresh socket into use: send again what was not acknowledged, follow again what was
        streaming, ask again what was not answered."""
        async with self._send_lock:
            if self._user_id is not None and ready["user_id"] != self._user_id:
                log.warning("reconnected as another user (%s, was %s)", ready["user_id"], self._user_id)
            self._ws, self._ready, self._gen = ws, ready, self._gen + 1
            self._user_id = ready["user_id"]
            self._token = ready.get("token") or self._token
            if self._conversation_id is not None and ready.get("conversation_id") is None:
                self._swallow_not_found = True  # the error `not_found` that follows is about this
                self._conversation_id = None
            elif ready.get("conversation_id"):
                self._conversation_id = ready["conversation_id"]
            supports_resume = "replies_in_flight" in ready
            in_flight = {r["reply_to"]: r for r in ready.get("replies_in_flight") or []}
            requests = [r for kind, r in self._awaiting if kind == "history"]
            self._awaiting = []
            for entry in list(self._entries):
                if entry.kind == "message" and entry.acked and supports_resume and entry.user_message_id in in_flight:
                    r = in_flight[entry.user_message_id]
                    if r["message_id"] != entry.reply_id:
                        entry.reply_id, entry.seq, entry.text, entry.gap = r["message_id"], 0, "", False
                    entry.sent_gen = self._gen
                    await self._send_resume(entry)
                else:
                    await self._send_entry(entry)
            for request in requests:
                self._awaiting.append(("history", request))
                await self._send_frame(request.frame)

    async def _read_forever(self) -> None:
        while True:
            ws = self._ws
            assert ws is not None
            code: int | None = None
            try:
                async for raw in ws:
                    self._dispatch_raw(raw)
                code = ws.close_code
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else None
            if self._closing:
                return
            async with self._send_lock:
                self._ws = None
            if code in _FATAL_CLOSE:
                reason = f": {ws.close_reason}" if ws.close_reason else ""
                detail = f"{self.url} closed the connection: {code} ({_FATAL_CLOSE[code]}){reason}"
                error: ChatError = Refused(detail, close_code=code) if code == 1008 else ChatError("closed", detail)
                self._give_up(error)
                return
            log.info("socket closed (code %s); reconnecting", code)
            try:
                await self._reconnect()
            except ChatError as e:
                self._give_up(e)
                return

    async def _reconnect(self) -> None:
        last: ChatError | None = None
        for attempt in range(self.retries + 1):
            await asyncio.sleep(self._delay(attempt) if attempt else random.uniform(0, self.backoff / 2))
            try:
                ws, ready = await self._open()
            except ChatError as e:
                # Refusals too: this token was accepted a moment ago, and a server shutting down
                # may refuse handshakes (403) until it is gone; a real refusal is raised at the end.
                last = e
                continue
            self.reconnects += 1
            await self._adopt(ws, ready)
            return
        if isinstance(last, Refused):
            raise last
        raise ConnectionFailed(f"lost the connection to {self.url} and could not reconnect after "
                               f"{self.retries + 1} attempts: {last.detail if last else ''}")

    def _give_up(self, error: ChatError) -> None:
        self._broken = error
        self._fail_all(error)
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(None)

    def _fail_all(self, error: ChatError) -> None:
        for entry in self._entries:
            entry.fail(error)
        self._entries.clear()
        for kind, item in self._awaiting:
            if kind == "history" and not item.future.done():
                item.future.set_exception(error)
        self._awaiting.clear()

    def _forget(self, entry: _Entry) -> None:
        with contextlib.suppress(ValueError):
            self._entries.remove(entry)
        with contextlib.suppress(ValueError):
            self._awaiting.remove(("resume", entry))

    # -- receiving
    def _dispatch_raw(self, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
            self._dispatch(frame)
        except Exception:  # one odd frame must not stop the reader
            log.exception("could not handle a frame from the server: %.200r", raw)

    def _dispatch(self, f: dict[str, Any]) -> None:
        kind = f.get("type")
        if kind == "ack":
            self._on_ack(f)
        elif kind == "start":
            self._on_start(f)
        elif kind == "delta":
            entry = self._by_reply(f.get("message_id"))
            if entry is not None:
                entry.on_delta(f.get("seq"), f.get("content", ""))
            else:
                self._event(f)
        elif kind == "done":
            self._on_done(f)
        elif kind == "history":
            for i, (k, request) in enumerate(self._awaiting):
                if k == "history" and request.frame["conversation_id"] == f.get("conversation_id"):
                    del self._awaiting[i]
                    if not request.future.done():
                        request.future.set_result(f)
                    break
        elif kind == "error":
            self._on_error(f)
        elif kind in ("message_added", "conversation_deleted"):
            self._event(f)
        else:
            log.debug("ignored frame %s", kind)

    def _by_reply(self, message_id: Any) -> _Entry | None:
        return next((e for e in self._entries if e.reply_id == message_id and message_id), None)

    def _on_ack(self, f: dict[str, Any]) -> None:
        entry = next((e for e in self._entries if e.client_id is not None and e.client_id == f.get("client_id")), None)
        if entry is None:
            return
        first = not entry.acked
        entry.acked, entry.user_message_id = True, f["message_id"]
        entry.conversation_id = f["conversation_id"]
        if f.get("duplicate"):
            entry.bare_done_expected = True
        if first:
            self._conversation_id = f["conversation_id"]

    def _on_start(self, f: dict[str, Any]) -> None:
        mid, reply_to = f.get("message_id"), f.get("reply_to")
        entry = self._by_reply(mid) or next(
            (e for e in self._entries if e.user_message_id == reply_to and reply_to and e.reply_id != mid), None)
        if entry is None:
            self._foreign.add(str(mid))
            self._event(f)
            return
        entry.on_start(f)
        with contextlib.suppress(ValueError):
            self._awaiting.remove(("resume", entry))

    def _on_done(self, f: dict[str, Any]) -> None:
        mid = f.get("message_id")
        entry = self._by_reply(mid)
        if entry is None and mid not in self._foreign:
            # A done with no start: the stored reply to a duplicate, or to a resume by reply_to.
            entry = next((e for k, e in self._awaiting if k == "resume" and e.reply_id is None), None) or next(
                (e for e in self._entries if e.kind == "message" and e.bare_done_expected), None)
        if entry is None:
            self._foreign.discard(str(mid))
            self._event(f)
            return
        if entry.kind == "message" and f.get("status") == "interrupted" and entry.resends < self.retries:
            # The reply this client followed died with its process (or ran out of detached time):
            # a resend of the client_id has the server generate it again.
            entry.resends += 1
            self._spawn(self._resend_later(entry, 0))
            return
        self._forget(entry)
        entry.finish(f)

    def _on_error(self, f: dict[str, Any]) -> None:
        code, detail, client_id = f.get("code", "internal"), f.get("detail", ""), f.get("client_id")
        if client_id is not None:
            entry = next((e for e in self._entries if e.client_id == client_id), None)
            if entry is None:
                return
            if code == "unavailable" and entry.resends < self.retries:
                entry.resends += 1  # not stored, or the turn failed after the ack: send it again a little later
                self._spawn(self._resend_later(entry, self._delay(entry.resends)))
                return
            self._forget(entry)
            entry.fail(ChatError(code, detail, client_id=client_id))
            return
        if code == "not_found" and self._swallow_not_found:
            self._swallow_not_found = False
            return
        if not self._awaiting:
            log.warning("error from the server: %s: %s", code, detail)
            return
        kind, item = self._awaiting.pop(0)
        if kind == "history":
            if not item.future.done():
                item.future.set_exception(ChatError(code, detail))
        elif item.kind == "message" and code == "not_found":
            self._spawn(self._resend_later(item, 0))  # no reply to follow: the resend completes the turn
        else:
            self._forget(item)
            item.fail(ChatError(code, detail))

    async def _resend_later(self, entry: _Entry, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._send_lock:
            if entry in self._entries and self._ws is not None:
                await self._send_entry(entry)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _event(self, f: dict[str, Any]) -> None:
        if not self.sync:
            log.debug("a frame for no waiting reply: %.200r", f)
            return
        if f.get("type") == "done":
            self._foreign.discard(str(f.get("message_id")))
        if self._events.full():
            self._events.get_nowait()  # bounded: the oldest event goes
            log.warning("events() is not read: dropped the oldest event")
        self._events.put_nowait(Event(f["type"], f.get("conversation_id"), f.get("message_id"), f))

