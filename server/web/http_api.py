"""The HTTP API beside the socket: conversations, messages, health and metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.auth import AuthError, Identity, bearer_token
from server.chat.services import Services
from server.db.store import InvalidBefore, NotFound
from server.db.uow import DatabaseUnavailable
from server.protocol import outgoing
from server.protocol.frames import (
    DEFAULT_HISTORY_LIMIT,
    INVALID_BEFORE,
    MAX_HISTORY_LIMIT,
    NO_SUCH_CONVERSATION,
    storable,
)
from server.web.static import STATIC_DIR

router = APIRouter()


def services(request: Request) -> Services:
    return request.app.state.services


def identity(request: Request, svc: Annotated[Services, Depends(services)]) -> Identity:
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise HTTPException(401, "send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
    try:
        return svc.auth.verify(token)
    except AuthError as e:
        raise HTTPException(401, str(e), headers={"WWW-Authenticate": "Bearer"}) from None


Svc = Annotated[Services, Depends(services)]
User = Annotated[Identity, Depends(identity)]


def unavailable() -> HTTPException:
    return HTTPException(503, "the database is unavailable; try again")


@router.get("/api/conversations")
async def list_conversations(svc: Svc, user: User) -> dict[str, Any]:
    try:
        return {"items": await svc.db.read(lambda store: store.list_conversations(user.user_id))}
    except DatabaseUnavailable:
        raise unavailable() from None


@router.get("/api/conversations/{conversation_id}/messages")
async def list_messages(conversation_id: str, svc: Svc, user: User, before: str | None = None,
                        limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_LIMIT)] = DEFAULT_HISTORY_LIMIT,
                        ) -> dict[str, Any]:
    if not storable(conversation_id):  # a NUL (%00) cannot name anything stored
        raise HTTPException(404, NO_SUCH_CONVERSATION)
    if before is not None and not storable(before):
        raise HTTPException(400, INVALID_BEFORE)
    try:
        page, has_more = await svc.db.read(lambda store: store.history(conversation_id, user.user_id, before, limit))
    except NotFound:
        raise HTTPException(404, NO_SUCH_CONVERSATION) from None
    except InvalidBefore:
        raise HTTPException(400, INVALID_BEFORE) from None
    except DatabaseUnavailable:
        raise unavailable() from None
    return {"conversation_id": conversation_id, "messages": [outgoing.message(m) for m in page],
            "has_more": has_more}


@router.delete("/api/conversations/{conversation_id}", status_code=204)
async def delete_conversation(conversation_id: str, svc: Svc, user: User) -> Response:
    if not storable(conversation_id):
        raise HTTPException(404, NO_SUCH_CONVERSATION)
    try:
        deleted = await svc.db.write(lambda store: store.delete_conversation(conversation_id, user.user_id))
    except DatabaseUnavailable:
        raise unavailable() from None
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
        checks["database"] = f"unavailable: {e}"[:300]
    if not await svc.backend.ready():
        checks["backend"] = "unreachable"  # the server stays up: turns end in `error` until it is back
    ok = checks["database"] == "ok" and checks["backend"] == "ok"
    return JSONResponse({"ready": ok, **checks}, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics_endpoint() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")
