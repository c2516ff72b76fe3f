"""The ASGI application: /ws goes straight to the socket handler, the rest to FastAPI."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from server import __version__
from server.bootstrap import start_services
from server.chat.services import Services
from server.config import Settings
from server.db.uow import DatabaseUnavailable
from server.protocol import outgoing
from server.resources import static_dir
from server.web import conversation_api
from server.web.guards import Guards
from server.web.http_api import router
from server.web.ws_endpoint import handle_socket


class ChatApp:
    """Routes WebSocket scopes without Starlette's per-frame wrapping; HTTP and lifespan to FastAPI."""

    def __init__(self, settings: Settings, bound_to_loopback: bool = False):
        self.settings = settings
        self.services: Services | None = None
        # Per-address and HTTP limits, allowed hosts (server/web/guards.py).
        self.guards = Guards(settings, bound_to_loopback)

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            self.services = await start_services(settings)
            app.state.services = self.services
            # Everything built so far (modules, the app, compiled statements) lives as long as the
            # process: out of the collector's sight, so that a full collection under load walks
            # only what turns made, not the whole heap, and pauses every socket for less.
            gc.collect()
            gc.freeze()
            # A young collection every 700 new objects promotes whatever is in flight at that
            # moment (a pause per streaming reply, its timer, its task): with a thousand long
            # replies, that made a full collection, a pause of every socket of 40-50 ms, every
            # 4 s. Every 50,000: one full collection in 20 s, and a fifth of the time in the
            # collector (docs/benchmarks.md, long streams).
            gc.set_threshold(50_000, 10, 10)
            try:
                yield
            finally:
                await self.services.close()

        # /docs only on request (CHAT_API_DOCS): it advertises the API, and Swagger UI loads from a CDN.
        docs = settings.api_docs
        self.http = FastAPI(title="chat-server", version=__version__, lifespan=lifespan, redoc_url=None,
                            docs_url="/docs" if docs else None, openapi_url="/openapi.json" if docs else None)
        self.http.state.guards = self.guards
        self.http.include_router(router)
        self.http.include_router(conversation_api.router)
        self.http.add_exception_handler(DatabaseUnavailable, database_unavailable)
        self.http.mount("/static", StaticFiles(directory=static_dir()), name="static")
        # Pages on the allowed origins (an embedded widget) may call the HTTP API; no one else.
        self.http.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins,
                                 allow_methods=["GET", "DELETE", "PATCH", "PUT"],
                                 allow_headers=["Authorization", "Content-Type"], max_age=600)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and not self.guards.host_allowed(scope):
            await refuse_host(scope, send)
            return
        if scope["type"] == "websocket":
            if scope["path"] == "/ws" and self.services is not None:
                await handle_socket(scope, receive, send, self.services, self.guards)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        await self.http(scope, receive, send)


async def database_unavailable(_request: Request, _exc: Exception) -> JSONResponse:
    """Every HTTP route's answer when the database cannot do the work: 503, the socket's text."""
    return JSONResponse({"detail": outgoing.DATABASE_UNAVAILABLE}, status_code=503)


async def refuse_host(scope: dict[str, Any], send: Any) -> None:
    """A Host not in CHAT_ALLOWED_HOSTS: 400 over HTTP, 403 at a WebSocket handshake."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = b"unknown host; see CHAT_ALLOWED_HOSTS"
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
