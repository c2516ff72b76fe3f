"""Server frames of chat.v1, built in one place."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import orjson

from server import PROTOCOL
from server.domain import iso
from server.protocol.codes import ErrorCode

if TYPE_CHECKING:
    from server.domain import MessageRecord


def encode(frame: dict[str, Any]) -> bytes:
    """The frame as UTF-8 JSON, the payload of a text frame."""
    try:
        return orjson.dumps(frame)
    except orjson.JSONEncodeError:
        # A lone surrogate, echoed in an error's client_id: escaped (\udfff), as the client sent it.
        return json.dumps(frame, separators=(",", ":")).encode()


def error(code: ErrorCode, detail: str, client_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code.value, "detail": detail}
    if client_id is not None:
        frame["client_id"] = client_id
    return frame


# The one text for every "the database could not do it" answer, on the socket and over HTTP.
DATABASE_UNAVAILABLE = "the database is unavailable; nothing was changed: try again"


def unavailable(client_id: str | None = None) -> dict[str, Any]:
    """The error frame for work the database could not do; with the client_id of a message
    that was not stored."""
    return error(ErrorCode.UNAVAILABLE, DATABASE_UNAVAILABLE, client_id)


def ready(user_id: str, conversation_id: str | None, token: str | None,
          replies_in_flight: list[dict[str, Any]]) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "ready", "protocol": PROTOCOL, "user_id": user_id,
                             "conversation_id": conversation_id, "replies_in_flight": replies_in_flight}
    if token:
        frame["token"] = token
    return frame


def ack(message: MessageRecord, duplicate: bool) -> dict[str, Any]:
    return {"type": "ack", "client_id": message.client_id, "conversation_id": message.conversation_id,
            "message_id": message.id, "parent_id": message.parent_id, "duplicate": duplicate}


def regenerate_ack(user_message: MessageRecord, client_id: str | None, duplicate: bool) -> dict[str, Any]:
    """A regeneration's ack: its new reply to `user_message` is claimed, durably."""
    return {"type": "ack", "client_id": client_id, "conversation_id": user_message.conversation_id,
            "message_id": user_message.id, "regenerate": True, "duplicate": duplicate}


def start(conversation_id: str, reply_id: str, reply_to: str) -> dict[str, Any]:
    return {"type": "start", "conversation_id": conversation_id, "message_id": reply_id, "reply_to": reply_to}


def delta(reply_id: str, seq: int, content: str) -> dict[str, Any]:
    return {"type": "delta", "message_id": reply_id, "seq": seq, "content": content}


def done(reply: MessageRecord) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "done", "conversation_id": reply.conversation_id, "message_id": reply.id,
                             "reply_to": reply.reply_to, "status": reply.status, "content": reply.content}
    if reply.status == "error":
        frame["error"] = reply.error or "the reply failed"
    return frame


def message(m: MessageRecord) -> dict[str, Any]:
    """A stored message as `history` (and `message_added`) carry it."""
    out: dict[str, Any] = {"id": m.id, "role": m.role, "content": m.content, "status": m.status,
                           "client_id": m.client_id, "created_at": iso(m.created_at), "parent_id": m.parent_id}
    if m.role == "assistant":
        out["reply_to"] = m.reply_to
        out["model"] = m.model
        out["usage"] = {"prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens}
        out["first_token_ms"] = m.first_token_ms
        if m.error is not None:
            out["error"] = m.error
        out["feedback"] = feedback(m.feedback_rating, m.feedback_comment)
    return out


def feedback(rating: int | None, comment: str | None) -> dict[str, Any] | None:
    return None if rating is None else {"rating": rating, "comment": comment}


def history(conversation_id: str, messages: list[MessageRecord], has_more: bool, leaf_id: str | None,
            siblings: dict[str, list[str]]) -> dict[str, Any]:
    """A page of a branch: each message with the ids of its siblings (itself included)."""
    return {"type": "history", "conversation_id": conversation_id,
            "messages": [{**message(m), "siblings": siblings.get(m.id, [m.id])} for m in messages],
            "has_more": has_more, "leaf_id": leaf_id}


def selected(conversation_id: str, leaf_id: str, client_id: str | None = None) -> dict[str, Any]:
    """To the socket that selected (with its select's client_id, if any) and to its user's sync sockets."""
    frame = {"type": "selected", "conversation_id": conversation_id, "leaf_id": leaf_id}
    if client_id is not None:
        frame["client_id"] = client_id
    return frame


def message_added(m: MessageRecord) -> dict[str, Any]:
    return {"type": "message_added", "conversation_id": m.conversation_id, "message": message(m)}


def conversation_updated(conversation: dict[str, Any]) -> dict[str, Any]:
    return {"type": "conversation_updated", "conversation": conversation}


def conversation_deleted(conversation_id: str) -> dict[str, Any]:
    return {"type": "conversation_deleted", "conversation_id": conversation_id}

