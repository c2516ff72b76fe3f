"""One thing the client waits for, kept with all it needs to be sent again and to give each piece once.

An `Entry` is a message this client sent, a regeneration it asked for (both turns, sent again with
their `client_id` until their `done`), or a reply it follows, until its `done`: the ids learnt
from `ack` and `start`, the last `seq` it has, the text already given to the reader, and the queue
and future its `ReplyStream` reads. `CurrentConversation` is where a message without
`conversation_id` goes, chosen once per message so that a resend is the same frame. A `Request`
is a frame the server answers once, in order (`history`, `select`), asked again on a new socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

from .results import Reply


class Absent:
    pass


CURRENT: Final = Absent()  # the client's current conversation (the server's "absent")
Target: TypeAlias = str | None | Absent  # a conversation id, None for a new one, or CURRENT
# A message's parent: a message id, None for a new root, or CURRENT (absent: the current leaf).
Parent: TypeAlias = str | None | Absent
TURNS: Final = frozenset({"message", "regenerate"})  # the kinds sent again with their client_id


class CurrentConversation:
    """The conversation a message goes to when it names none."""

    def __init__(self, conversation_id: str | None) -> None:
        self.id = conversation_id
        self.new_next = False  # the next message starts a new conversation

    def resolve(self, target: Target) -> Target:
        """An id, None (a new conversation), or CURRENT (left out: the socket's current one)."""
        if not isinstance(target, Absent):
            return target
        if self.new_next:
            self.new_next = False
            return None
        return self.id if self.id is not None else CURRENT


class Entry:
    """A message sent by this client (kind "message"), a new reply to one of the user's messages
    (kind "regenerate", `reply_to` that message), or a reply it follows (kind "resume")."""

    def __init__(self, kind: str, *, client_id: str | None = None, content: str | None = None,
                 target: Target = CURRENT, parent: Parent = CURRENT, message_id: str | None = None,
                 reply_to: str | None = None, after: int = 0) -> None:
        self.kind, self.client_id, self.content, self.target = kind, client_id, content, target
        self.parent = parent  # a message's parent_id on the wire (CURRENT: left out)
        self.regenerates = reply_to if kind == "regenerate" else None  # a regenerate's reply_to on the wire
        self.wire_target: Target = CURRENT  # what the first send put on the wire
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
        kind = {"message": "message ", "regenerate": "regeneration "}.get(self.kind, "followed reply ")
        return kind + ", ".join(parts)

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
                      message_id=frame["message_id"], reply_to=self.user_message_id or frame.get("reply_to"),
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


class Request:
    """A request the server answers with one frame (`history`, `select`), waiting for its answer."""

    def __init__(self, frame: dict[str, Any]) -> None:
        self.frame = frame
        self.kind: str = frame["type"]
        self.future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)
            self.future.exception()  # retrieved: a request whose wait ran out logs no warning
