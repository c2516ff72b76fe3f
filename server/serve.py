"""Running under uvicorn, with a shutdown that keeps the contract.

On SIGTERM or SIGINT the server first stops every reply in flight (stored as interrupted) and
closes every socket with 1001 itself; only then does uvicorn's own shutdown run (which would
close sockets with 1012 and not wait for the stores).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn

from server.app import ChatApp
from server.config import Settings
from server.db.migrate import upgrade_to_head
from server.web import log_safety
from server.web.http_protocols import http_protocol
from server.web.ws_protocol import ChatWebSocketProtocol

log = logging.getLogger(__name__)


class ChatServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: ChatApp):
        super().__init__(config)
        self.chat_app = app
        self._closing: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        services = self.chat_app.services
        if self._closing is not None or services is None or sig not in (signal.SIGTERM, signal.SIGINT):
            return super().handle_exit(sig, frame)  # a second signal: uvicorn's own (forced) exit
        loop = asyncio.get_running_loop()
        self._closing = loop.create_task(self._close_sockets_then_exit(sig, frame))

    async def _close_sockets_then_exit(self, sig: int, frame: FrameType | None) -> None:
        services = self.chat_app.services
        assert services is not None
        try:
            await services.hub.shut_down(services.settings.shutdown_grace_s)
        finally:
            super().handle_exit(sig, frame)


def uvicorn_config(app: ChatApp, settings: Settings, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        # uvicorn's, with deadlines for a whole request and for a client that does not read.
        http=http_protocol(settings.request_timeout_s, settings.send_timeout_s),
        # Limits below the message layer: continuation/ping/pong frames, fragments, slow readers.
        ws=ChatWebSocketProtocol.configured(settings.max_frames_per_second, settings.send_timeout_s),
        log_config=None,  # ours, set up in cli
        access_log=False,
        ws_max_size=settings.max_frame_bytes,  # bigger frames close with 1009; also caps inflated size
        ws_per_message_deflate=settings.ws_per_message_deflate,
        ws_ping_interval=settings.ws_ping_interval_s or None,
        ws_ping_timeout=settings.ws_ping_interval_s or None,
        timeout_graceful_shutdown=3,
        server_header=False,
        forwarded_allow_ips=settings.trusted_proxies,  # whose X-Forwarded-For the per-address limits count
    )


async def serve(settings: Settings, host: str, port: int) -> None:
    log_safety.install()  # what a client sends cannot forge a log line (server/web/log_safety.py)
    await upgrade_to_head(settings)
    app = ChatApp(settings, bound_to_loopback=_loopback(host))
    server = ChatServer(uvicorn_config(app, settings, host, port), app)
    log.info("chat-server on http://%s:%d (database %s, model %s, %s mode)", host, port,
             _redact(settings.database_url), settings.llm, "token" if settings.token_mode else "open")
    await server.serve()


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
