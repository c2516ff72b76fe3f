"""Client frames in (server frames out are in outgoing.py). Pure: no I/O, so every rule is unit-tested directly."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

from server.protocol.codes import ErrorCode

ABSENT: Final = object()  # a field the client did not send (distinct from null)
MAX_CLIENT_ID = 64
MAX_HISTORY_LIMIT = 200
DEFAULT_HISTORY_LIMIT = 50
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
NO_SUCH_CONVERSATION = "no such conversation"
INVALID_BEFORE = "before is not a message of this conversation"
NO_SUCH_REPLY = "no such reply"
NO_SUCH_MESSAGE = "no such message"


def storable(text: str) -> bool:
    """Neither database takes a NUL character or a lone surrogate (valid JSON can carry both).
    An id holding one cannot name anything stored, and must not reach a query."""
    return _BAD_CHARS.search(text) is None


def storable_text(text: str) -> str:
    """`text` with what neither database takes (NUL, lone surrogates) removed: a model server's
    piece can hold either, and one such piece would fail the whole reply's store."""
    return text if text.isascii() and "\x00" not in text else _BAD_CHARS.sub("", text)


MAX_ID_CHARS = 36  # conversation and message ids are UUIDs, in String(36) columns


def known_id(text: str) -> bool:
    """Whether `text` could name a stored conversation or message. A longer one cannot, and must
    not reach a query either: PostgreSQL refuses it as too long for the column (an error per frame,
    counted as a commit failure), where any unknown id should simply be not_found."""
    return len(text) <= MAX_ID_CHARS and storable(text)


@dataclass(frozen=True, slots=True)
class MessageFrame:
    content: str
    conversation_id: Any = ABSENT  # ABSENT, None (a new conversation) or an id
    client_id: str | None = None
    parent_id: Any = ABSENT  # ABSENT (follow the current leaf), None (a new root: an edit) or an id


@dataclass(frozen=True, slots=True)
class RegenerateFrame:
    reply_to: str  # the user message to answer again
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class SelectFrame:
    conversation_id: str
    message_id: str  # the branch through it becomes current
    client_id: str | None = None  # repeated in the answer, so that a client can match it


@dataclass(frozen=True, slots=True)
class CancelFrame:
    message_id: str | None = None  # a reply of this user, wherever it runs; None: this socket's turn


@dataclass(frozen=True, slots=True)
class ResumeFrame:
    message_id: str | None  # the reply, or
    reply_to: str | None  # the user message it answers
    after: int  # the last seq the client has


@dataclass(frozen=True, slots=True)
class HistoryFrame:
    conversation_id: str | None  # None: absent (or null), the socket's current conversation
    before: str | None
    limit: int
    leaf: str | None = None  # the path to this message instead of the current branch


ClientFrame = MessageFrame | CancelFrame | HistoryFrame | ResumeFrame | RegenerateFrame | SelectFrame


class FrameError(Exception):
    def __init__(self, code: ErrorCode, detail: str, client_id: str | None = None):
        super().__init__(detail)
        self.code, self.detail, self.client_id = code, detail, client_id


def parse(raw: str, max_chars: int) -> ClientFrame:
    """One text frame from the client, or FrameError saying what is wrong with it."""
    if not raw.lstrip().startswith("{"):
        # Plain text is a message, so that a person can chat from wscat.
        return MessageFrame(content=_content(raw, max_chars, None))
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        obj = _loads_strictly_valid(raw, e)
    if not isinstance(obj, dict):
        raise FrameError(ErrorCode.INVALID, "a frame starting with '{' must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise FrameError(ErrorCode.INVALID, "frame needs a string field 'type'")
    if kind == "message":
        return _message(obj, max_chars)
    if kind == "cancel":
        return _cancel(obj)
    if kind == "history":
        return _history(obj)
    if kind == "resume":
        return _resume(obj)
    if kind == "regenerate":
        return _regenerate(obj)
    if kind == "select":
        return _select(obj)
    raise FrameError(ErrorCode.INVALID, f"unknown frame type {kind[:40]!r}; expected message, cancel, resume, "
                     "history, regenerate or select")


def _loads_strictly_valid(raw: str, orjson_error: Exception) -> Any:
    """orjson refuses some valid JSON (a lone surrogate escape, "\\ud800"); the standard parser
    takes it, so the frame gets the precise answer (invalid content, its client_id repeated)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise FrameError(ErrorCode.INVALID, f"frame is not valid JSON ({orjson_error}); to send text, send it "
                         "without a leading '{', or as a message frame: {\"type\":\"message\",\"content\":\"…\"}"
                         ) from None


def _client_id(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """(the client_id, the one to repeat in an error): checked as the idempotency key it is."""
    client_id = obj.get("client_id")
    echo_id = client_id if isinstance(client_id, str) else None
    if client_id is not None:
        if not isinstance(client_id, str):
            raise FrameError(ErrorCode.INVALID, "client_id must be a string")
        if not 1 <= len(client_id) <= MAX_CLIENT_ID:
            raise FrameError(ErrorCode.INVALID, f"client_id must be 1 to {MAX_CLIENT_ID} characters", echo_id)
        if not storable(client_id):
            raise FrameError(ErrorCode.INVALID, "client_id holds a NUL character or a lone surrogate", echo_id)
    return client_id, echo_id


def _message(obj: dict[str, Any], max_chars: int) -> MessageFrame:
    client_id, echo_id = _client_id(obj)
    conversation_id = obj.get("conversation_id", ABSENT)
    if conversation_id is not ABSENT and conversation_id is not None:
        if not isinstance(conversation_id, str):
            raise FrameError(ErrorCode.INVALID, "conversation_id must be a string or null", echo_id)
        # A NUL or a lone surrogate can name nothing. A too-long id cannot either, but the message
        # may be a resend, whose conversation_id is ignored: that one is answered after the
        # client_id check, without a query (server/chat/commit_points.py).
        if not storable(conversation_id):
            raise FrameError(ErrorCode.NOT_FOUND, NO_SUCH_CONVERSATION, echo_id)
    parent_id = obj.get("parent_id", ABSENT)
    if parent_id is not ABSENT and parent_id is not None:
        if not isinstance(parent_id, str):
            raise FrameError(ErrorCode.INVALID, "parent_id must be a message id (a string) or null", echo_id)
        if not known_id(parent_id):
            raise FrameError(ErrorCode.NOT_FOUND, NO_SUCH_MESSAGE, echo_id)
    if "content" not in obj:
        raise FrameError(ErrorCode.INVALID, "message needs a string field 'content'", echo_id)
    return MessageFrame(_content(obj["content"], max_chars, echo_id), conversation_id, client_id, parent_id)


def _regenerate(obj: dict[str, Any]) -> RegenerateFrame:
    client_id, echo_id = _client_id(obj)
    reply_to = obj.get("reply_to")
    if not isinstance(reply_to, str):
        raise FrameError(ErrorCode.INVALID, "regenerate needs reply_to: the id of your message to answer again",
                         echo_id)
    if not known_id(reply_to):
        raise FrameError(ErrorCode.NOT_FOUND, NO_SUCH_MESSAGE, echo_id)
    return RegenerateFrame(reply_to, client_id)


def _select(obj: dict[str, Any]) -> SelectFrame:
    client_id, echo_id = _client_id(obj)
    conversation_id, message_id = obj.get("conversation_id"), obj.get("message_id")
    if not isinstance(conversation_id, str) or not isinstance(message_id, str):
        raise FrameError(ErrorCode.INVALID, "select needs conversation_id and message_id (strings)", echo_id)
    if not known_id(conversation_id) or not known_id(message_id):
        raise FrameError(ErrorCode.NOT_FOUND, NO_SUCH_MESSAGE, echo_id)
    return SelectFrame(conversation_id, message_id, client_id)


def _content(content: Any, max_chars: int, client_id: str | None) -> str:
    if not isinstance(content, str):
        raise FrameError(ErrorCode.INVALID, "content must be a string", client_id)
    if len(content) > max_chars:  # len() counts code points
        raise FrameError(ErrorCode.TOO_LARGE,
                         f"content is {len(content)} characters; the limit is {max_chars}", client_id)
    if not content.strip():
        raise FrameError(ErrorCode.INVALID, "content is empty", client_id)
    if not storable(content):
        raise FrameError(ErrorCode.INVALID, "content holds a NUL character or a lone surrogate", client_id)
    return content


def _optional_id(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise FrameError(ErrorCode.INVALID, f"{name} must be a string")
    return value


def _cancel(obj: dict[str, Any]) -> CancelFrame:
    message_id = _optional_id(obj, "message_id")
    if message_id is not None and not known_id(message_id):
        message_id = ""  # names nothing: ignored, like any id that is not a reply in flight
    return CancelFrame(message_id)


def _resume(obj: dict[str, Any]) -> ResumeFrame:
    message_id, reply_to = _optional_id(obj, "message_id"), _optional_id(obj, "reply_to")
    if (message_id is None) == (reply_to is None):
        raise FrameError(ErrorCode.INVALID, "resume needs one of message_id (a reply) or reply_to (a message)")
    after = obj.get("after", 0)
    if after is None:
        after = 0
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise FrameError(ErrorCode.INVALID, "after must be a non-negative integer (the last seq you have)")
    named = message_id if message_id is not None else reply_to
    if not known_id(named or ""):  # never a stored id: no query
        raise FrameError(ErrorCode.NOT_FOUND, NO_SUCH_REPLY)
    return ResumeFrame(message_id, reply_to, after)


def _history(obj: dict[str, Any]) -> HistoryFrame:
    conversation_id = obj.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise FrameError(ErrorCode.INVALID, "conversation_id must be a string, or absent for the current conversation")
    if conversation_id is not None and not known_id(conversation_id):
        raise FrameError(ErrorCode.NOT_FOUND, NO_SUCH_CONVERSATION)
    before = obj.get("before")
    if before is not None and not isinstance(before, str):
        raise FrameError(ErrorCode.INVALID, "before must be a message id (a string)")
    if before is not None and not known_id(before):
        raise FrameError(ErrorCode.INVALID, INVALID_BEFORE)
    limit = obj.get("limit", DEFAULT_HISTORY_LIMIT)
    if limit is None:
        limit = DEFAULT_HISTORY_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise FrameError(ErrorCode.INVALID, f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}")
    leaf = obj.get("leaf")
    if leaf is not None and not isinstance(leaf, str):
        raise FrameError(ErrorCode.INVALID, "leaf must be a message id (a string)")
    if leaf is not None and not known_id(leaf):
        raise FrameError(ErrorCode.NOT_FOUND, NO_SUCH_MESSAGE)
    return HistoryFrame(conversation_id, before, limit, leaf)
