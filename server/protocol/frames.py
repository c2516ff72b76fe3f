"""Client frames in, server frames out. Pure: no I/O, so every rule is unit-tested directly."""

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


def storable(text: str) -> bool:
    """Neither database takes a NUL character or a lone surrogate (valid JSON can carry both).
    An id holding one cannot name anything stored, and must not reach a query."""
    return _BAD_CHARS.search(text) is None


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


@dataclass(frozen=True, slots=True)
class CancelFrame:
    pass


@dataclass(frozen=True, slots=True)
class HistoryFrame:
    conversation_id: str
    before: str | None
    limit: int


ClientFrame = MessageFrame | CancelFrame | HistoryFrame


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
        return CancelFrame()
    if kind == "history":
        return _history(obj)
    raise FrameError(ErrorCode.INVALID, f"unknown frame type {kind[:40]!r}; expected message, cancel or history")


def _loads_strictly_valid(raw: str, orjson_error: Exception) -> Any:
    """orjson refuses some valid JSON (a lone surrogate escape, "\\ud800"); the standard parser
    takes it, so the frame gets the precise answer (invalid content, its client_id repeated)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise FrameError(ErrorCode.INVALID, f"frame is not valid JSON: {orjson_error}") from None


def _message(obj: dict[str, Any], max_chars: int) -> MessageFrame:
    client_id = obj.get("client_id")
    echo_id = client_id if isinstance(client_id, str) else None
    if client_id is not None:
        if not isinstance(client_id, str):
            raise FrameError(ErrorCode.INVALID, "client_id must be a string")
        if not 1 <= len(client_id) <= MAX_CLIENT_ID:
            raise FrameError(ErrorCode.INVALID, f"client_id must be 1 to {MAX_CLIENT_ID} characters", echo_id)
        if not storable(client_id):
            raise FrameError(ErrorCode.INVALID, "client_id holds a NUL character or a lone surrogate", echo_id)
    conversation_id = obj.get("conversation_id", ABSENT)
    if conversation_id is not ABSENT and conversation_id is not None:
        if not isinstance(conversation_id, str):
            raise FrameError(ErrorCode.INVALID, "conversation_id must be a string or null", echo_id)
        if not known_id(conversation_id):
            raise FrameError(ErrorCode.NOT_FOUND, NO_SUCH_CONVERSATION, echo_id)
    if "content" not in obj:
        raise FrameError(ErrorCode.INVALID, "message needs a string field 'content'", echo_id)
    return MessageFrame(_content(obj["content"], max_chars, echo_id), conversation_id, client_id)


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


def _history(obj: dict[str, Any]) -> HistoryFrame:
    conversation_id = obj.get("conversation_id")
    if not isinstance(conversation_id, str):
        raise FrameError(ErrorCode.INVALID, "history needs a string field 'conversation_id'")
    if not known_id(conversation_id):
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
    return HistoryFrame(conversation_id, before, limit)


# -- server frames ---------------------------------------------------------------------------------
def encode(frame: dict[str, Any]) -> str:
    try:
        return orjson.dumps(frame).decode()
    except orjson.JSONEncodeError:
        # A lone surrogate, echoed in an error's client_id: escaped (\udfff), as the client sent it.
        return json.dumps(frame, separators=(",", ":"))


def error(code: ErrorCode, detail: str, client_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code.value, "detail": detail}
    if client_id is not None:
        frame["client_id"] = client_id
    return frame
