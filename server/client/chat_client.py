"""`ChatClient`: the public operations and the life of the client; the work is done by its parts.

The connection opens sockets, the outbox sends (and sends again) what the client waits for, the
dispatcher applies the server's frames to it, and `Pending` keeps the books. The client adopts each
new socket and reads it until it closes, then reconnects or gives up. Branches (edit, regenerate,
select, a conversation's tree) are turns and requests like the others; the tree alone is HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final, Literal, TypeAlias, overload
from urllib.parse import quote, urlencode

from websockets.asyncio.client import ClientConnection

from .connection import Connection
from .dispatch import Dispatcher
from .entries import CURRENT, Absent, CurrentConversation, Entry, Parent, Request, Target
from .errors import ChatError, ChatTimeout
from .outbox import Outbox
from .pending import Pending
from .rest import api_base, get_json, get_text, patch_json, put_json
from .results import (
    Conversation,
    ConversationPage,
    Event,
    Feedback,
    HistoryPage,
    Message,
    Models,
    Reply,
    ReplyInFlight,
    SearchHit,
    SearchPage,
    Tree,
    TreeNode,
)
from .stream import ReplyStream

log = logging.getLogger("server.client")

UNCHANGED: Final = Absent()  # a conversation setting left as it is (None: back to the server's default)
Setting: TypeAlias = str | None | Absent


class ChatClient:
    """A chat.v1 client over one WebSocket that it reconnects when it drops.

    `url`: the server's `ws://…/ws`. `token`: the user's token; None in open mode, where the
    server mints one (kept in `.token` and presented on every reconnect: keep it to come back as
    the same user). `conversation_id`: the conversation to start in. `sync`: also hear the user's
    other sockets (`events()`). `timeout`: the default wait for a reply or an answer.
    `connect_timeout`: one connection attempt. `retries`, `backoff`, `max_backoff`: how many times,
    and how far apart (doubling, with jitter), a connection is tried again before `ConnectionFailed`.
    `http_url`: the HTTP API's base, for `tree()` and the other HTTP calls (default: `url` as
    http(s), without its `/ws`).
    """

    def __init__(self, url: str, token: str | None = None, *, conversation_id: str | None = None,
                 sync: bool = False, timeout: float = 60.0, connect_timeout: float = 10.0, retries: int = 8,
                 backoff: float = 0.2, max_backoff: float = 5.0, headers: Mapping[str, str] | None = None,
                 origin: str | None = None, ping_interval: float | None = 20.0, http_url: str | None = None) -> None:
        self.url, self.sync, self.timeout, self.connect_timeout = url, sync, timeout, connect_timeout
        self.http_url = (http_url or api_base(url)).rstrip("/")
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
    def stream(self, content: str, *, conversation_id: Target = CURRENT, parent_id: Parent = CURRENT,
               client_id: str | None = None, timeout: float | None = None) -> ReplyStream:
        """Send a message; iterate the result for the reply's pieces, or await it for the Reply.
        The message is sent when the iteration (or the await) begins.

        `conversation_id`: absent for the current conversation, None for a new one.
        `parent_id`: absent to follow the conversation's current leaf, a message id to follow that
        message (then, unless `conversation_id` is given, it goes to that message's conversation),
        None for a new root of the conversation.
        `client_id`: the idempotency key (a fresh one when absent).
        """
        async def begin() -> Entry:
            self._check_usable()
            return await self._submit(Entry("message", client_id=client_id or _new_client_id(), content=content,
                                            target=conversation_id, parent=parent_id))

        return ReplyStream(self, begin, self.timeout if timeout is None else timeout)

    async def send(self, content: str, *, conversation_id: Target = CURRENT, parent_id: Parent = CURRENT,
                   client_id: str | None = None, timeout: float | None = None) -> Reply:
        """Send a message and wait for its stored reply."""
        return await self.stream(content, conversation_id=conversation_id, parent_id=parent_id,
                                 client_id=client_id, timeout=timeout)

    def edit_stream(self, message: str | Message, content: str, *, conversation_id: str | None = None,
                    client_id: str | None = None, timeout: float | None = None) -> ReplyStream:
        """Send `content` in place of one of the user's messages: a new message with the same
        parent (a sibling of it; the old one stays stored), whose branch becomes current. Iterate
        the result for the reply's pieces, or await it for the Reply.

        `message`: a `Message` (from `history()`), or a message id, looked up in `conversation_id`
        (default: the current conversation) with one `history` request.
        """
        async def begin() -> Entry:
            self._check_usable()
            target: Target = CURRENT if conversation_id is None else conversation_id
            if isinstance(message, Message):
                original = message
                if original.parent_id is None:  # a new root: of this conversation, not of a new one
                    target = self._conversation(conversation_id)
            else:
                page = await self.history_page(conversation_id, leaf=message, limit=1, timeout=timeout)
                if not page.messages or page.messages[-1].id != message:
                    raise ChatError("not_found", f"message {message} is not in conversation {page.conversation_id}")
                original, target = page.messages[-1], page.conversation_id
            if original.role != "user":
                raise ValueError(f"edit takes a user message; {original.id} is an {original.role} message")
            return await self._submit(Entry("message", client_id=client_id or _new_client_id(), content=content,
                                            target=target, parent=original.parent_id))

        return ReplyStream(self, begin, self.timeout if timeout is None else timeout)

    async def edit(self, message: str | Message, content: str, *, conversation_id: str | None = None,
                   client_id: str | None = None, timeout: float | None = None) -> Reply:
        """Edit one of the user's messages (see `edit_stream`) and wait for the new reply."""
        return await self.edit_stream(message, content, conversation_id=conversation_id, client_id=client_id,
                                      timeout=timeout)

    def regenerate_stream(self, reply_to: str | Message | Reply, *, client_id: str | None = None,
                          timeout: float | None = None) -> ReplyStream:
        """Have a new reply generated to one of the user's messages; it becomes the current leaf,
        the earlier replies stay stored beside it. Iterate the result for its pieces, or await it.

        `reply_to`: the user message's id, the user `Message`, or a `Reply` (or assistant `Message`)
        to that message. `client_id`: the idempotency key, in the same namespace as messages'
        (a fresh one when absent): sent again after a drop, it never makes a second reply.
        An error `busy` means a reply to that message is being generated right now.
        """
        user_message_id = _user_message_id(reply_to)

        async def begin() -> Entry:
            self._check_usable()
            return await self._submit(Entry("regenerate", client_id=client_id or _new_client_id(),
                                            reply_to=user_message_id))

        return ReplyStream(self, begin, self.timeout if timeout is None else timeout)

    async def regenerate(self, reply_to: str | Message | Reply, *, client_id: str | None = None,
                         timeout: float | None = None) -> Reply:
        """A new reply to one of the user's messages (see `regenerate_stream`), once stored."""
        return await self.regenerate_stream(reply_to, client_id=client_id, timeout=timeout)

    async def select(self, message_id: str, conversation_id: str | None = None, *,
                     timeout: float | None = None) -> str:
        """Make the branch through `message_id` current; the new leaf (the newest message below
        it). The user's `sync=True` clients hear it as a `selected` event."""
        conversation_id = self._conversation(conversation_id)
        answer = await self._ask({"type": "select", "conversation_id": conversation_id, "message_id": message_id},
                                 timeout, f"select of {message_id}")
        return str(answer["leaf_id"])

    async def tree(self, conversation_id: str | None = None, *, timeout: float | None = None) -> Tree:
        """Every message of a conversation (default: the current one) on every branch, without
        contents, and its current leaf; from the HTTP API, with this client's token."""
        conversation_id = self._conversation(conversation_id)
        body = await self._http("GET", f"/api/conversations/{_segment(conversation_id)}/tree", timeout=timeout)
        return Tree(conversation_id, body.get("leaf_id"), [TreeNode.from_wire(m) for m in body.get("items") or []])

    async def conversations(self, q: str | None = None, *, before: str | None = None, limit: int | None = None,
                            timeout: float | None = None) -> ConversationPage:
        """A page of the user's conversations, most recently updated first (HTTP). `q`: only those
        whose title contains every word of it; `before`: the last id of the previous page;
        `limit`: the page's size (the server's default when None)."""
        body = await self._http("GET", "/api/conversations", query={"q": q, "before": before, "limit": limit},
                                timeout=timeout)
        return ConversationPage([Conversation.from_wire(c) for c in body.get("items") or []],
                                bool(body.get("has_more")))

    async def conversation(self, conversation_id: str | None = None, *,
                           timeout: float | None = None) -> Conversation:
        """One of the user's conversations (None: the current one) with its settings; `not_found`
        for someone else's or an unknown one."""
        path = f"/api/conversations/{_segment(self._conversation(conversation_id))}"
        return Conversation.from_wire(await self._http("GET", path, timeout=timeout))

    async def rename(self, conversation_id: str | None, title: str, *, timeout: float | None = None) -> Conversation:
        """Give a conversation (None: the current one) a title of the user's (1 to 200 characters),
        which the server never replaces. The user's `sync=True` clients hear `conversation_updated`."""
        return await self._patch_conversation(conversation_id, {"title": title}, timeout)

    async def settings(self, conversation_id: str | None, *, system_prompt: Setting = UNCHANGED,
                       model: Setting = UNCHANGED, timeout: float | None = None) -> Conversation:
        """Change a conversation's (None: the current one's) system prompt and/or model, one of
        `models()`; a setting left out stays as it is, None puts it back to the server's default.
        An unknown model or a prompt too long: `ChatError` code `invalid`."""
        changes: dict[str, Any] = {}
        if not isinstance(system_prompt, Absent):
            changes["system_prompt"] = system_prompt
        if not isinstance(model, Absent):
            changes["model"] = model
        if not changes:
            raise ValueError("settings() changes nothing: pass system_prompt= and/or model=")
        return await self._patch_conversation(conversation_id, changes, timeout)

    async def models(self, *, timeout: float | None = None) -> Models:
        """The models a conversation may be set to, and the server's default."""
        body = await self._http("GET", "/api/models", timeout=timeout)
        return Models([str(m["id"]) for m in body.get("items") or []], body.get("default"))

    async def search(self, q: str, *, before: str | None = None, limit: int | None = None,
                     timeout: float | None = None) -> SearchPage:
        """A page of the user's messages that hold every word of `q` (whole words, any case),
        newest first. `before`: the last hit's `message_id` of the previous page; `limit`: 1 to
        200 (the server's default 20 when None). A blank or too long `q`: code `invalid`."""
        body = await self._http("GET", "/api/search", query={"q": q, "before": before, "limit": limit},
                                timeout=timeout)
        return SearchPage([SearchHit.from_wire(h) for h in body.get("items") or []], bool(body.get("has_more")))

    async def search_all(self, q: str, *, limit: int | None = None,
                         timeout: float | None = None) -> AsyncIterator[SearchHit]:
        """Every hit of `search(q)`, newest first, asking for the pages (of `limit`) as it goes."""
        before: str | None = None
        while True:
            page = await self.search(q, before=before, limit=limit, timeout=timeout)
            for hit in page.items:
                yield hit
            if not page.has_more or not page.items:
                return
            before = page.items[-1].message_id

    @overload
    async def export(self, conversation_id: str | None = ..., format: Literal["json"] = ..., *,
                     timeout: float | None = ...) -> dict[str, Any]: ...

    @overload
    async def export(self, conversation_id: str | None, format: Literal["markdown"], *,
                     timeout: float | None = ...) -> str: ...

    @overload
    async def export(self, *, format: Literal["markdown"], timeout: float | None = ...) -> str: ...

    @overload
    async def export(self, conversation_id: str | None = ..., format: str = ..., *,
                     timeout: float | None = ...) -> dict[str, Any] | str: ...

    async def export(self, conversation_id: str | None = None, format: str = "json", *,
                     timeout: float | None = None) -> dict[str, Any] | str:
        """A conversation (None: the current one) as a file would have it. "json": a dict, its
        `conversation` (with `leaf_id`) and `messages`, every message of every branch, oldest first,
        with `parent_id`; "markdown": the current branch as Markdown text."""
        if format not in ("json", "markdown"):
            raise ValueError(f"export format is json or markdown, not {format!r}")
        path = f"/api/conversations/{_segment(self._conversation(conversation_id))}/export"
        if format == "markdown":
            text = await self._http("GET", path, query={"format": "markdown"}, timeout=timeout, accept="text/markdown")
            return str(text)
        body = await self._http("GET", path, timeout=timeout)
        if not isinstance(body, dict):
            raise ChatError("internal", f"the export of {conversation_id} is not a JSON object")
        return body

    async def feedback(self, message: str | Message | Reply, rating: int, comment: str | None = None, *,
                       timeout: float | None = None) -> Feedback | None:
        """Rate one of the user's assistant messages (its id, the `Reply` or the `Message`): 1, -1,
        or 0 (no rating), with an optional comment (up to 2000 characters); what is stored now.
        A user message or a bad rating: code `invalid`; someone else's or unknown: `not_found`."""
        if isinstance(message, Reply):
            message_id = message.message_id
        elif isinstance(message, Message):
            message_id = message.id
        else:
            message_id = message
        body: dict[str, Any] = {"rating": rating}
        if comment is not None:
            body["comment"] = comment
        answer = await self._http("PUT", f"/api/messages/{_segment(message_id)}/feedback", body=body,
                                  timeout=timeout)
        return Feedback.from_wire((answer or {}).get("feedback"))

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
                           limit: int | None = None, leaf: str | None = None,
                           timeout: float | None = None) -> HistoryPage:
        """One page of a conversation (default: the current one), oldest first: of the path from
        its root to the current leaf, or to `leaf` (any message of it: another branch)."""
        conversation_id = self._conversation(conversation_id)
        frame: dict[str, Any] = {"type": "history", "conversation_id": conversation_id}
        if before is not None:
            frame["before"] = before
        if limit is not None:
            frame["limit"] = limit
        if leaf is not None:
            frame["leaf"] = leaf
        answer = await self._ask(frame, timeout, f"history of {conversation_id}")
        return HistoryPage(answer["conversation_id"], [Message.from_wire(m) for m in answer["messages"]],
                           bool(answer.get("has_more")), answer.get("leaf_id"))

    async def history(self, conversation_id: str | None = None, *, before: str | None = None,
                      limit: int | None = None, leaf: str | None = None, timeout: float | None = None) -> list[Message]:
        """The newest `limit` messages (server default 50) older than `before`, oldest first, of
        the current branch (or of the path to `leaf`)."""
        page = await self.history_page(conversation_id, before=before, limit=limit, leaf=leaf, timeout=timeout)
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

    def _conversation(self, conversation_id: str | None) -> str:
        conversation_id = conversation_id or self._current.id
        if conversation_id is None:
            raise ValueError("no conversation yet: pass conversation_id")
        return conversation_id

    async def _patch_conversation(self, conversation_id: str | None, changes: dict[str, Any],
                                  timeout: float | None) -> Conversation:
        path = f"/api/conversations/{_segment(self._conversation(conversation_id))}"
        return Conversation.from_wire(await self._http("PATCH", path, body=changes, timeout=timeout))

    async def _http(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                    timeout: float | None = None, accept: str | None = None) -> Any:
        """A request to the HTTP API with this client's token: GET (its JSON answer, or with
        `accept` its text), PUT or PATCH `body` as JSON. `query`: the parameters that are not None."""
        self._check_usable()
        headers = dict(self.headers)
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        url = self.http_url + path
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urlencode(params)
        wait = self.timeout if timeout is None else timeout
        if method == "PUT":
            return await put_json(url, body, headers, wait)
        if method == "PATCH":
            return await patch_json(url, body, headers, wait)
        if accept is not None:
            return await get_text(url, headers, wait, accept)
        return await get_json(url, headers, wait)

    async def _submit(self, entry: Entry) -> Entry:
        await self._outbox.submit(entry)
        return entry

    async def _ask(self, frame: dict[str, Any], timeout: float | None, what: str) -> dict[str, Any]:
        """Send a request the server answers with one frame (asked again on a new socket); its answer."""
        self._check_usable()
        request = Request(frame)
        async with self._conn.send_lock:
            self._pending.expect(request.kind, request)
            await self._conn.send(frame)
        wait = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), wait)
        except TimeoutError:
            raise ChatTimeout(f"no answer within {wait:g}s to {what}") from None
        finally:
            self._pending.unexpect(request.kind, request)

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


def _segment(value: str) -> str:
    """An id as one segment of a URL's path."""
    return quote(value, safe="")


def _new_client_id() -> str:
    return f"py-{uuid.uuid4().hex}"


def _user_message_id(reply_to: str | Message | Reply) -> str:
    """The user message a regenerate answers again, from its id, itself, or a reply to it."""
    if isinstance(reply_to, str):
        return reply_to
    if isinstance(reply_to, Message) and reply_to.role == "user":
        return reply_to.id
    if reply_to.reply_to is None:
        raise ValueError("this reply does not say which message it answers: pass the user message's id")
    return reply_to.reply_to
