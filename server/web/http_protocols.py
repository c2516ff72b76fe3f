"""uvicorn's HTTP protocols with a deadline for the request (docs/protocol.md: a connection that has
not sent a whole request within 10 s of opening is closed).

uvicorn has no such timeout (its settings time out only an idle keep-alive connection and the
shutdown): a handshake whose headers never finish, or a body trickled a byte at a time, keeps its
connection and file descriptor forever, so a few thousand of them exhaust the process's
descriptors. Here a timer starts when the connection opens and again when a response has been
sent (the next request on a keep-alive connection), and is cancelled once the request is whole or
the connection is upgraded to a WebSocket; when it fires on an unfinished request, the connection
is closed. This belongs upstream (a `timeout_request` beside `timeout_keep_alive`); until then it
is a subclass of whichever protocol uvicorn's "auto" would choose (httptools if installed, else h11).

Likewise a client that never reads its response: uvicorn waits for the transport to drain with no
timeout, holding the response (a history page is up to about 1 MiB) for as long as the client
likes. Once the transport asks us to pause writing, a timer runs (CHAT_SEND_TIMEOUT_S, as for
sockets); if writing is still paused when it fires, the connection is aborted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11

from server.web.uvicorn_internals import H11Protocol, HttpToolsProtocol

log = logging.getLogger(__name__)


class RequestDeadline:
    """The timer, shared by both protocols; each says when its request is whole."""

    request_timeout_s = 10.0
    slow_reader_s = 10.0
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    client: tuple[str, int] | None
    _request_timer: asyncio.TimerHandle | None = None
    _slow_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._request_timer = self.loop.call_later(self.request_timeout_s, self._request_expired)

    def _disarm(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _request_whole(self) -> bool:
        raise NotImplementedError

    # Placed before uvicorn's protocol in the bases: these run, then hand on to it.
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._writing_resumed()
        super().connection_lost(exc)  # type: ignore[misc]

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        self._writing_paused()

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        self._writing_resumed()

    def _writing_paused(self) -> None:
        if self._slow_timer is None:
            self._slow_timer = self.loop.call_later(self.slow_reader_s, self._slow_reader)

    def _writing_resumed(self) -> None:
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None

    def _slow_reader(self) -> None:
        self._slow_timer = None
        log.info("aborting a connection from %r: it read nothing for %gs", self.client and self.client[0],
                 self.slow_reader_s)
        self.transport.abort()

    def _request_expired(self) -> None:
        self._request_timer = None
        if not self._request_whole() and not self.transport.is_closing():
            log.info("closing a connection from %r: no whole request within %gs",
                     self.client and self.client[0], self.request_timeout_s)
            self.transport.close()


class H11WithDeadline(RequestDeadline, H11Protocol):
    def _request_whole(self) -> bool:
        # h11: IDLE until the request line and headers are in, SEND_BODY until the body is.
        return self.conn.their_state not in (h11.IDLE, h11.SEND_BODY)

    def handle_events(self) -> None:
        super().handle_events()
        if self._request_whole():
            self._disarm()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm()
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self._request_whole():
            self._arm()


def _httptools_protocol() -> type[asyncio.Protocol] | None:
    if HttpToolsProtocol is None:
        return None

    class HttpToolsWithDeadline(RequestDeadline, HttpToolsProtocol):
        _whole = False

        def _request_whole(self) -> bool:
            return self._whole

        def on_message_begin(self) -> None:
            self._whole = False
            super().on_message_begin()

        def on_message_complete(self) -> None:
            self._whole = True
            self._disarm()
            super().on_message_complete()

        def handle_websocket_upgrade(self) -> None:
            self._disarm()
            super().handle_websocket_upgrade()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self._whole:
                self._arm()

    return HttpToolsWithDeadline


def http_protocol(request_timeout_s: float, slow_reader_s: float) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn.Config(http=...): uvicorn's "auto" choice, with the deadlines."""
    base: Any = _httptools_protocol() or H11WithDeadline
    return type(base.__name__, (base,), {"request_timeout_s": request_timeout_s, "slow_reader_s": slow_reader_s})
