"""The /ws handshake: shutting down, Origin, identity; then the connection takes over."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

from server.auth import AuthError, bearer_token
from server.chat.services import Services
from server.chat.session import ChatSession
from server.protocol.codes import CloseCode
from server.web.guards import Guards, TooMany
from server.web.socket import Scope, Socket

log = logging.getLogger(__name__)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """No Origin (wscat, scripts) is allowed; a present one must be ours or allow-listed."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in allowed:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and host is not None and parts.netloc.lower() == host.lower()


async def handle_socket(scope: Scope, receive, send, svc: Services,  # type: ignore[no-untyped-def]
                        guards: Guards) -> None:
    sock = Socket(receive, send, svc.settings.send_timeout_s,
                  http_response="websocket.http.response" in scope.get("extensions", {}))
    if not await sock.wait_connect():
        return
    if svc.hub.shutting_down:
        await sock.refuse("shutting down", 503)  # not an auth refusal: a client should retry elsewhere
        return
    if not origin_allowed(_header(scope, b"origin"), _header(scope, b"host"), svc.settings.allowed_origins):
        # Escaped, not %r: a newline cannot forge a log line, and the line reads as before.
        log.info("refused a socket from origin %s", repr(_header(scope, b"origin") or "")[1:-1])
        await sock.refuse("origin not allowed")
        return
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    query_token = (query.get("token") or [None])[0]
    header_token = bearer_token(_header(scope, b"authorization"))
    if query_token and header_token and query_token != header_token:
        log.info("refused a socket: ?token= and Authorization disagree")
        await sock.refuse("two tokens that disagree")
        return
    token = query_token or header_token
    try:
        if not token and not svc.auth.token_mode:
            guards.new_user(scope)
        identity = svc.auth.identify(token)
    except TooMany as e:
        log.info("refused a socket from %r: %s", scope.get("client"), e)
        await sock.refuse(str(e), 429, e.headers)
        return
    except AuthError as e:
        log.info("refused a socket: %r", str(e))
        await sock.refuse(str(e))
        return
    if not svc.limits.open_socket(identity.user_id):
        await sock.accept()  # a close code needs an accepted socket; nothing else is sent
        await sock.close(CloseCode.TRY_AGAIN_LATER, "too many sockets for this user")
        return
    conversation_id = (query.get("conversation_id") or [None])[0] or None
    sync = (query.get("sync") or ["0"])[0].lower() in ("1", "true", "yes")
    # The handshake has read all it needs from the headers, but the scope lives as long as the
    # socket (uvicorn and the frames above hold it): about 1 KiB per idle socket.
    scope["headers"] = []
    try:
        await sock.accept()
        await ChatSession(sock, svc, identity, sync).serve(conversation_id)
    finally:
        svc.limits.close_socket(identity.user_id)
