"""The HTTP API that shapes and finds conversations: settings (PATCH), models, search, export and
feedback. Every route is the user's own: someone else's conversation or message is a 404, the
same answer as none."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from server import metrics
from server.db import conversations, feedback, search, tree
from server.db.store import InvalidBefore, NotFound
from server.domain import iso
from server.protocol import export, outgoing
from server.protocol.frames import NO_SUCH_CONVERSATION, NO_SUCH_MESSAGE, known_id, storable
from server.protocol.snippets import snippet
from server.web.http_api import Svc, User

log = logging.getLogger(__name__)
router = APIRouter()

MAX_TITLE_CHARS = 200
MAX_QUERY_CHARS = 200
SEARCH_PAGE = 20
MAX_SEARCH_PAGE = 200
MAX_COMMENT_CHARS = 2000
INVALID_SEARCH_BEFORE = "before must be the message_id of a hit (the last of the previous page)"


class ConversationChanges(BaseModel):
    """PATCH's body: any of the three; a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid")
    title: str | None = None
    system_prompt: str | None = None
    model: str | None = None


class Rating(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rating: int = Field(ge=-1, le=1, strict=True)
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_CHARS)


def unprocessable(field: str, detail: str) -> HTTPException:
    return HTTPException(422, [{"loc": ["body", field], "msg": detail, "type": "value_error"}])


@router.get("/api/conversations/{conversation_id}")
async def get_conversation(conversation_id: str, svc: Svc, user: User) -> dict[str, Any]:
    if not known_id(conversation_id):
        raise HTTPException(404, NO_SUCH_CONVERSATION)
    found = await svc.db.read(lambda store: conversations.get(store, conversation_id, user.user_id))
    if found is None:
        raise HTTPException(404, NO_SUCH_CONVERSATION)
    return found


@router.patch("/api/conversations/{conversation_id}")
async def patch_conversation(conversation_id: str, changes: ConversationChanges, svc: Svc,
                             user: User) -> dict[str, Any]:
    if not known_id(conversation_id):
        raise HTTPException(404, NO_SUCH_CONVERSATION)
    values = await _checked(changes, svc)
    updated = await svc.db.write(lambda store: conversations.update_settings(store, conversation_id, user.user_id,
                                                                            values))
    if updated is None:
        raise HTTPException(404, NO_SUCH_CONVERSATION)
    if values:
        svc.bus.announce_updated(user.user_id, updated)
    return updated


async def _checked(changes: ConversationChanges, svc: Svc) -> dict[str, Any]:
    given = changes.model_fields_set
    values: dict[str, Any] = {}
    if "title" in given:
        title = " ".join((changes.title or "").split())  # one line: it heads a list
        if not title:
            raise unprocessable("title", "title must hold at least one visible character")
        if len(title) > MAX_TITLE_CHARS or not storable(title):
            raise unprocessable("title", f"title must be 1 to {MAX_TITLE_CHARS} characters, without NUL")
        values["title"] = title
    if "system_prompt" in given:
        prompt = changes.system_prompt
        limit = svc.settings.max_message_chars
        if prompt is not None and (len(prompt) > limit or not storable(prompt)):
            raise unprocessable("system_prompt", f"system_prompt must be at most {limit} characters, "
                                                 "without NUL (null: the server's default)")
        values["system_prompt"] = prompt
    if "model" in given:
        if changes.model is not None:
            available = await svc.models.models()
            if changes.model not in available.ids:
                raise unprocessable("model", "model must be one of GET /api/models (null: the server's default)")
        values["model"] = changes.model
    return values


@router.get("/api/models")
async def list_models(svc: Svc, user: User) -> dict[str, Any]:
    available = await svc.models.models()
    return {"items": [{"id": model} for model in available.ids], "default": available.default}


@router.get("/api/search")
async def search_messages(svc: Svc, user: User, q: Annotated[str, Query(max_length=MAX_QUERY_CHARS)],
                          before: str | None = None,
                          limit: Annotated[int, Query(ge=1, le=MAX_SEARCH_PAGE)] = SEARCH_PAGE) -> dict[str, Any]:
    words = search.words_of(q)
    if not words:
        raise HTTPException(400, "q must hold at least one word (letters or digits)")
    if before is not None and not known_id(before):
        raise HTTPException(400, INVALID_SEARCH_BEFORE)
    try:
        hits, has_more = await svc.db.read(lambda store: search.search(store, user.user_id, q, before, limit))
    except InvalidBefore:
        raise HTTPException(400, INVALID_SEARCH_BEFORE) from None
    items = [{"conversation_id": h.conversation_id, "message_id": h.message_id, "role": h.role,
              "snippet": snippet(h.content, words), "created_at": iso(h.created_at)} for h in hits]
    return {"items": items, "has_more": has_more}


@router.get("/api/conversations/{conversation_id}/export", response_model=None)
async def export_conversation(conversation_id: str, svc: Svc, user: User,
                              format: Annotated[str, Query(pattern="^(json|markdown)$")] = "json") -> Any:
    if not known_id(conversation_id):
        raise HTTPException(404, NO_SUCH_CONVERSATION)

    def read(store: Any) -> tuple[dict[str, Any], str | None, list[Any]] | None:
        found = conversations.get(store, conversation_id, user.user_id)
        if found is None:
            return None
        leaf = tree.leaf_of(store, conversation_id, user.user_id)
        if format == "markdown":
            return found, leaf, tree.current_path(store, conversation_id, user.user_id)
        return found, leaf, tree.every_message(store, conversation_id)

    got = await svc.db.read(read)  # one transaction: the tree and its leaf agree
    if got is None:
        raise HTTPException(404, NO_SUCH_CONVERSATION)
    conversation, leaf, messages = got
    extension = "md" if format == "markdown" else "json"
    headers = {"Content-Disposition": f'attachment; filename="{export.filename(conversation, extension)}"'}
    if format == "markdown":
        return Response(export.as_markdown(conversation, messages), media_type="text/markdown; charset=utf-8",
                        headers=headers)
    return Response(outgoing.encode(export.as_json(conversation, leaf, messages)), media_type="application/json",
                    headers=headers)


@router.put("/api/messages/{message_id}/feedback")
async def put_feedback(message_id: str, svc: Svc, user: User,
                       given: Annotated[Rating, Body()]) -> dict[str, Any]:
    if not known_id(message_id):
        raise HTTPException(404, NO_SUCH_MESSAGE)
    if given.comment is not None and not storable(given.comment):
        raise unprocessable("comment", "comment must not hold NUL")
    try:
        conversation_id, model = await svc.db.write(
            lambda store: feedback.rate(store, user.user_id, message_id, given.rating, given.comment))
    except NotFound:
        raise HTTPException(404, NO_SUCH_MESSAGE) from None
    except feedback.NotAReply:
        raise unprocessable("message_id", "feedback is for the assistant's replies, not your own messages") from None
    metrics.FEEDBACK.labels(str(given.rating), model or "unknown").inc()
    return {"message_id": message_id, "conversation_id": conversation_id,
            "feedback": outgoing.feedback(given.rating, given.comment)}
