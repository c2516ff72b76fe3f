"""Running under uvicorn, with a shutdown that keeps the contract.

On SIGTERM or SIGINT the server first stops every reply in flight (stored as interrupted) and
closes every socket with 1001 itself; only then does uvicorn's own shutdown run (which would
close sockets with 1012 and not wait for the stores).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Iterator
from types import FrameType

import uvicorn

from server.app import ChatApp
from server.config import Settings
from server.db.migrate import upgrade_to_head
from server.logs import shown_url
from server.operator_errors import OperatorError, explain_database_error
from server.web.http_protocols import http_protocol
from server.web.ws_protocol import ChatWebSocketProtocol

log = logging.getLogger(__name__)


class UvicornServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: ChatApp, start_line: str = ""):
        super().__init__(config)
        self.chat_app = app
        self.start_line = start_line
        self._closing: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                # uvicorn raises the signal again once it has shut down, which turns Ctrl-C into a
                # KeyboardInterrupt traceback and SIGTERM into status 143. The graceful shutdown
                # was the answer to the signal: exit 0.
                self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            log.info("%s", self.start_line)  # only now: the socket listens and the app has started
            task = asyncio.get_running_loop().create_task(self._check_backend())
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def _check_backend(self) -> None:
        services = self.chat_app.services
        if services is None or services.settings.llm == "echo":
            return
        if not await services.backend.ready():
            log.warning("the model backend at %s does not answer; the server is up, but turns will end in "
                        "`error` until it does (check OPENAI_BASE_URL, and that the backend runs)",
                        backend_url(services.settings))

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


def backend_url(settings: Settings) -> str:
    from server.chat.backends.openai import DEFAULT_BASE_URL

    return settings.openai_base_url or DEFAULT_BASE_URL


def describe_model(settings: Settings) -> str:
    if settings.llm == "echo":
        return "model echo (built in)"
    return f"model {settings.model} at {backend_url(settings)}"


def listen(host: str, port: int) -> socket.socket:
    """Bind before anything else, so that a taken port is one line and nothing claims to have started."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        # One address: IPv4 first, so that `localhost` answers at 127.0.0.1, where clients try.
        family, kind, proto, _, address = sorted(found, key=lambda info: info[0] != socket.AF_INET)[0]
    except socket.gaierror as e:
        raise OperatorError(f"--host {host}: cannot resolve it ({e.strerror}); use an address such as "
                            "127.0.0.1 or 0.0.0.0") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        where = f"cannot listen on {host}:{port}"
        if e.errno == errno.EADDRINUSE:
            raise OperatorError(f"{where}: the address is already in use (another chat-server?); stop that "
                                "process or choose another --port") from None
        if e.errno == errno.EACCES:
            raise OperatorError(f"{where}: permission denied (ports below 1024 need privileges); choose a "
                                "--port above 1023") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise OperatorError(f"{where}: this machine has no such address; use 127.0.0.1, 0.0.0.0 or one "
                                "of its own addresses for --host") from None
        raise OperatorError(f"{where}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


async def prepare_database(settings: Settings) -> None:
    """Migrate, or raise OperatorError saying what is wrong with the database and how to fix it."""
    try:
        await upgrade_to_head(settings)
    except Exception as e:
        line = explain_database_error(e, settings)
        if line is None:
            raise
        raise OperatorError(line) from e


MODE_MARKER = "server_mode"


async def record_server_mode(settings: Settings) -> None:
    """Kept beside the open-mode secret, so that `chat-server token` without CHAT_AUTH_SECRET can
    refuse to mint an open-mode token for a server that runs in token mode."""
    from datetime import UTC, datetime

    from sqlalchemy import delete, insert
    from sqlalchemy.exc import IntegrityError

    from server.db.engine import make_engine
    from server.db.schema import server_secrets

    engine = make_engine(settings, pooled=False)
    try:
        for attempt in range(5):
            try:
                async with engine.begin() as conn:
                    await conn.execute(delete(server_secrets).where(server_secrets.c.name == MODE_MARKER))
                    await conn.execute(insert(server_secrets).values(
                        name=MODE_MARKER, value="token" if settings.token_mode else "open",
                        created_at=datetime.now(UTC)))
                return
            except IntegrityError:
                # Processes starting at once on one database: another wrote its marker between
                # our DELETE and INSERT. Write ours again (the last one started wins).
                if attempt == 4:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
    finally:
        await engine.dispose()


async def last_server_mode(settings: Settings) -> str | None:
    from sqlalchemy import select

    from server.db.engine import make_engine
    from server.db.schema import server_secrets

    engine = make_engine(settings, pooled=False)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(
                select(server_secrets.c.value).where(server_secrets.c.name == MODE_MARKER))).scalar()
    finally:
        await engine.dispose()


async def serve(settings: Settings, host: str, port: int) -> None:
    sock = listen(host, port)
    try:
        await prepare_database(settings)
        await record_server_mode(settings)
        app = ChatApp(settings, bound_to_loopback=_loopback(host))
        shown_host = f"[{host}]" if ":" in host else host
        start_line = (f"chat-server on http://{shown_host}:{sock.getsockname()[1]} (database "
                      f"{shown_url(settings.database_url)}, {describe_model(settings)}, "
                      f"{'token' if settings.token_mode else 'open'} mode)")
        server = UvicornServer(uvicorn_config(app, settings, host, port), app, start_line)
        await server.serve(sockets=[sock])
    finally:
        sock.close()


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
