"""uvicorn's WebSocket protocol, lighter per socket, with a closing handshake that survives a client
still sending.

Memory: an idle socket lives for hours, so what uvicorn keeps per connection counts ten thousand
times. uvicorn's asyncio.Queue and asyncio.Event hold five deques (760 B each) for one reader and
rare flow control; `Inbox` and `Writable` below do the same with a list and a future made only
while someone waits. The handshake's request and response headers (about 3 KiB) are dropped once
the response is written: the app has its own copy in the scope.

Closing: when a frame breaks a limit (1009 too big, 1007 invalid UTF-8), uvicorn writes the close
frame and closes the TCP socket at once. If the client is still sending (a fragmented or
compressed bomb), closing with unread input makes the kernel answer with a reset, and the client
may never read the close code. Here the close frame is followed by a half-close (FIN), as the
websockets library asks for, and the socket keeps reading, and discarding, until the client
closes its side or a short timer runs out.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

DRAIN_S = 2.0


class Inbox:
    """The events for the app, in order: uvicorn's `queue`, for its one reader (the ASGI app)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("another coroutine is already waiting for the next event")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class Writable:
    """uvicorn's `writable` event (cleared while the transport asks us to pause writing); any
    number of senders may wait for it."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class ChatWebSocketProtocol(WebSocketsSansIOProtocol):
    draining = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Writable()  # type: ignore[assignment]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The scope has the headers now. websockets' parser keeps the Request for the
        # connection's life, so empty it rather than only letting go of it.
        event.headers.clear()
        self.request = None  # type: ignore[assignment]

    def start_keepalive(self) -> None:
        # uvicorn calls this right after writing the accept response: that is its last use.
        self.response = None  # type: ignore[assignment]
        super().start_keepalive()

    def handle_parser_exception(self) -> None:
        assert self.conn.close_sent is not None
        code, reason = self.conn.close_sent.code, self.conn.close_sent.reason
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client sees the end at once and closes its side
        self.close_sent = True
        self.draining = True
        if self.read_paused:  # the app may never read again: keep the input flowing to discard it
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(DRAIN_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self.draining:
            return
        super().data_received(data)
