"""The HTTP API beside the socket: conversations, messages, health and metrics."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.auth import AuthError, Identity, bearer_token
from server.chat.services import Services
from server.db import conversations, tree
from server.db.store import InvalidBefore, NotFound
from server.db.uow import DatabaseUnavailable
from server.protocol import outgoing
from server.protocol.frames import (
    DEFAULT_HISTORY_LIMIT,
    INVALID_BEFORE,
    MAX_HISTORY_LIMIT,
    NO_SUCH_CONVERSATION,
    NO_SUCH_MESSAGE,
    known_id,
)
from server.resources import static_dir
from server.web.guards import Guards, TooMany

log = logging.getLogger(__name__)
router = APIRouter()

CONVERSATIONS_PAGE = 50
MAX_TITLE_QUERY_CHARS = 200
MAX_CONVERSATIONS_PAGE = 200
INVALID_BEFORE_CONVERSATION = "before must be the id of one of your conversations (the last of the previous page)"


def services(request: Request) -> Services:
    return request.app.state.services


def identity(request: Request, svc: Annotated[Services, Depends(services)]) -> Identity:
    guards: Guards = request.app.state.guards
    try:
        guards.http_request(request.scope)  # per address, before the token is even looked at
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise HTTPException(401, "send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
        try:
            user = svc.auth.verify(token)
        except AuthError as e:
            raise HTTPException(401, str(e), headers={"WWW-Authenticate": "Bearer"}) from None
        guards.http_user(user.user_id)
    except TooMany as e:
        raise HTTPException(429, str(e), headers=e.headers) from None
    return user


Svc = Annotated[Services, Depends(services)]
User = Annotated[Identity, Depends(identity)]


@router.get("/api/conversations")
async def list_conversations(svc: Svc, user: User, before: str | None = None,
                             limit: Annotated[int, Query(ge=1, le=MAX_CONVERSATIONS_PAGE)] = CONVERSATIONS_PAGE,
                             q: Annotated[str | None, Query(max_length=MAX_TITLE_QUERY_CHARS)] = None,
                             ) -> dict[str, Any]:
    """A page of the user's conversations; with `q`, those whose title holds every word of it."""
    if before is not None and not known_id(before):
        raise HTTPException(400, INVALID_BEFORE_CONVERSATION)
    words = None if q is None else q.split()
    if words is not None and not words:
        raise HTTPException(400, "q must hold at least one word")
    try:
        items, has_more = await svc.db.read(lambda store: conversations.page(store, user.user_id, before, limit,
                                                                            words))
    except InvalidBefore:
        raise HTTPException(400, INVALID_BEFORE_CONVERSATION) from None
    return {"items": items, "has_more": has_more}


@router.get("/api/conversations/{conversation_id}/messages")
async def list_messages(conversation_id: str, svc: Svc, user: User, before: str | None = None,
                        limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_LIMIT)] = DEFAULT_HISTORY_LIMIT,
                        leaf: str | None = None) -> dict[str, Any]:
    """A page of the current branch (or of the path to `leaf`), as the history frame has it."""
    if not known_id(conversation_id):  # too long, or a NUL (%00): cannot name anything stored
        raise HTTPException(404, NO_SUCH_CONVERSATION)
    if before is not None and not known_id(before):
        raise HTTPException(400, INVALID_BEFORE)
    if leaf is not None and not known_id(leaf):
        raise HTTPException(404, NO_SUCH_MESSAGE)
    try:
        page = await svc.db.read(lambda store: tree.branch(store, conversation_id, user.user_id, before, limit, leaf))
    except NotFound as e:
        raise HTTPException(404, NO_SUCH_MESSAGE if leaf is not None and e.args == (leaf,)
                            else NO_SUCH_CONVERSATION) from None
    except InvalidBefore:
        raise HTTPException(400, INVALID_BEFORE) from None
    frame = outgoing.history(conversation_id, page.messages, page.has_more, page.leaf_id, page.siblings)
    del frame["type"]
    return frame


@router.get("/api/conversations/{conversation_id}/tree")
async def conversation_tree(conversation_id: str, svc: Svc, user: User) -> dict[str, Any]:
    """The whole tree without contents, oldest first, and the current leaf."""
    if not known_id(conversation_id):
        raise HTTPException(404, NO_SUCH_CONVERSATION)
    try:
        return await svc.db.read(lambda store: tree.tree(store, conversation_id, user.user_id))
    except NotFound:
        raise HTTPException(404, NO_SUCH_CONVERSATION) from None


@router.delete("/api/conversations/{conversation_id}", status_code=204)
async def delete_conversation(conversation_id: str, svc: Svc, user: User) -> Response:
    if not known_id(conversation_id):
        raise HTTPException(404, NO_SUCH_CONVERSATION)
    deleted = await svc.db.write(lambda store: store.delete_conversation(conversation_id, user.user_id))
    if not deleted:
        raise HTTPException(404, NO_SUCH_CONVERSATION)
    svc.bus.stop_conversation(conversation_id, "deleted")
    svc.bus.announce_deleted(user.user_id, conversation_id)
    return Response(status_code=204)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz")
async def readyz(svc: Svc) -> JSONResponse:
    checks = {"database": "ok", "backend": "ok"}
    try:
        await svc.db.ping()
    except DatabaseUnavailable as e:
        log.warning("/readyz: the database does not answer: %r", str(e)[:500])
        checks["database"] = "unavailable"  # the detail (driver error, SQL, address) stays in the log
    if not await svc.backend.ready():
        checks["backend"] = "unreachable"  # the server stays up: turns end in `error` until it is back
    checks.update(svc.bus.health())  # notify: down while replies cannot cross to other processes
    ok = all(value == "ok" for value in checks.values())
    return JSONResponse({"ready": ok, **checks}, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics_endpoint(request: Request, svc: Svc) -> Response:
    # Open unless CHAT_METRICS_TOKEN is set: a bearer secret works through any proxy and is one
    # line of Prometheus configuration, where a second listener would be a second server to run.
    expected = svc.settings.metrics_token
    if expected is not None and expected.get_secret_value():
        given = bearer_token(request.headers.get("authorization")) or ""
        if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
            raise HTTPException(401, "send Authorization: Bearer <CHAT_METRICS_TOKEN>",
                                headers={"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def index(svc: Svc) -> FileResponse:
    return FileResponse(static_dir() / "index.html", headers=page_headers(svc.settings.allowed_origins))


def page_headers(allowed_origins: list[str]) -> dict[str, str]:
    """The chat page's own script and styles only (the widget builds <style> elements, hence
    'unsafe-inline' for styles, never for scripts); framed only by us and the allowed origins."""
    ancestors = " ".join(["'self'", *allowed_origins])
    return {
        "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                   "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                                   f"form-action 'self'; frame-ancestors {ancestors}",
        "X-Content-Type-Options": "nosniff",
    }
