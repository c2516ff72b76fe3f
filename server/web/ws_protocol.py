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

Floods below the message layer (docs/protocol.md, "Limits and close codes"):
uvicorn hands the app only whole messages, and answers pings itself. So the app's frame-rate
limit never sees continuation, ping or pong frames, and a client that sends a text frame with
FIN=0 and then empty continuations nonstop, or 125-byte pings nonstop, costs the server CPU (other
users' turns took seconds) and memory (uvicorn keeps every fragment in a list, and writes every
pong into the transport whether or not the client reads: hundreds of MB in seconds). websockets
bounds a message's total size (max_size) but not its number of fragments, and writes a pong for
every ping. Here, in one place (`_admit` and the writing-paused timer):
- every frame (text, binary, continuation, ping, pong) takes a token from one bucket per socket
  (max_frames_per_second, bursts of twice that); a socket that keeps above it is closed with
  1008. This is the only frame-rate limit: the chat layer above never sees most of these frames;
- a message in more than MAX_FRAGMENTS fragments is closed with 1008;
- a client that does not read is cut off however the bytes waiting for it were queued (pongs
  included): once the transport asks us to pause writing (its buffer is above the high-water
  mark), the pongs we owe are dropped (RFC 6455 allows answering only the latest ping), and if
  it is still paused `slow_reader_s` later the connection is aborted.
uvicorn has none of these, nor a setting for them; they would belong upstream (uvicorn's
WebSocket protocols, or websockets' ServerProtocol for the fragment count).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

from websockets.frames import Frame
from websockets.http11 import Request
from websockets.protocol import State

from server.chat.limits import TokenBucket
from server.web.uvicorn_internals import WebSocketsSansIOProtocol

log = logging.getLogger(__name__)

DRAIN_S = 2.0
MAX_FRAGMENTS = 64  # docs/protocol.md: a message in more fragments closes with 1008
POLICY = 1008
CORK_LIMIT = 1 << 16  # bytes held for one write at most (asyncio's default high-water mark)
_HEADER_16 = struct.Struct("!BBH")  # FIN + text opcode, 126, a 16-bit length
_HEADER_64 = struct.Struct("!BBQ")


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
    # Set per server by `configured`; these defaults are the settings' defaults.
    frames_per_second = 50.0
    slow_reader_s = 10.0
    # Per socket, made only when used: an idle socket pays for none of them.
    fragments = 0
    bucket: TokenBucket | None = None
    slow_timer: asyncio.TimerHandle | None = None
    corked: list[bytes] | None = None  # frames to write at the end of this turn of the loop
    corked_bytes = 0

    @classmethod
    def configured(cls, frames_per_second: float, slow_reader_s: float) -> type[ChatWebSocketProtocol]:
        """This protocol with the server's limits (uvicorn.Config takes a class, not an instance)."""
        return type(cls.__name__, (cls,), {"frames_per_second": frames_per_second,
                                           "slow_reader_s": slow_reader_s})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Writable()  # type: ignore[assignment]

    # -- frames below the message layer (see the module docstring) ------------------------------
    def _admit(self) -> bool:
        """Count a frame, whatever its kind; False (and the socket closing) past the rate."""
        if self.draining:
            return False
        if self.bucket is None:
            self.bucket = TokenBucket(self.frames_per_second, 2 * self.frames_per_second, self.loop.time)
        return self.bucket.take() or self._refuse(f"over {self.frames_per_second:g} frames/s")

    def _refuse(self, reason: str) -> bool:
        log.warning("closing a flooding socket from %r: %s", self.client and self.client[0], reason)
        self.frames = []
        self.conn.fail(POLICY, "flooding")
        self.handle_parser_exception()
        return False

    def handle_text(self, event: Frame) -> None:
        if self._admit():
            self.fragments = 1
            super().handle_text(event)

    def handle_bytes(self, event: Frame) -> None:
        if self._admit():
            self.fragments = 1
            super().handle_bytes(event)

    def handle_cont(self, event: Frame) -> None:
        if not self._admit():
            return
        self.fragments += 1
        if self.fragments > MAX_FRAGMENTS:
            self._refuse(f"a message in more than {MAX_FRAGMENTS} fragments")
            return
        super().handle_cont(event)

    def handle_ping(self) -> None:
        # websockets has already queued the pong. A client whose transport is paused is not
        # reading: the pong is dropped rather than piled up (the slow-reader timer is running).
        if not self.writable.is_set():
            self.conn.data_to_send()
        if self._admit():
            super().handle_ping()

    def handle_pong(self, event: Frame) -> None:
        if self._admit():
            super().handle_pong(event)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.slow_timer is None:
            self.slow_timer = self.loop.call_later(self.slow_reader_s, self._slow_reader)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.slow_timer is not None:
            self.slow_timer.cancel()
            self.slow_timer = None

    def _slow_reader(self) -> None:
        self.slow_timer = None
        log.warning("client %r read nothing for %.1fs; dropping the connection", self.client and self.client[0],
                    self.slow_reader_s)
        self.transport.abort()  # connection_lost queues the disconnect for the app

    def connection_lost(self, exc: Exception | None) -> None:
        self.corked = None
        if self.slow_timer is not None:
            self.slow_timer.cancel()
            self.slow_timer = None
        super().connection_lost(exc)

    def write_text(self, payload: bytes) -> bool:
        """Send a text frame of `payload` (UTF-8) without the ASGI round, if nothing stands in the
        way: the handshake done, no close sent or received, the transport not paused, and no
        extension (permessage-deflate) to run it through. False: send it the ASGI way.

        uvicorn's send does the same after an ASGI message, an awaited event and websockets'
        Frame; that was a tenth of a turn's CPU, one delta at a time. A server's frames are not
        masked, and it never fragments them, so the frame is its header and the payload.

        Frames sent in one turn of the event loop (an ack and its start, a burst of deltas, the
        last delta and done) leave in one write at its end: one system call, not one per frame."""
        if (not self.handshake_complete or self.close_sent or self.conn.state is not State.OPEN
                or self.conn.extensions or not self.writable.is_set() or self.transport.is_closing()):
            return False
        size = len(payload)
        if size < 126:
            frame = bytes((0x81, size)) + payload
        elif size < 1 << 16:
            frame = _HEADER_16.pack(0x81, 126, size) + payload
        else:
            frame = _HEADER_64.pack(0x81, 127, size) + payload
        if self.corked is None:
            self.corked = [frame]
            self.corked_bytes = len(frame)
            self.loop.call_soon(self.uncork)
        else:
            self.corked.append(frame)
            self.corked_bytes += len(frame)
            if self.corked_bytes >= CORK_LIMIT:
                # A long burst (a resume from seq 0 of a long reply) goes to the transport now, so
                # that its flow control sees it: past its high-water mark it pauses us, and the
                # rest waits for the client to read rather than piling up here.
                self.uncork()
        return True

    def uncork(self) -> None:
        """Write the frames held since this turn of the loop began. Everything else that writes
        (uvicorn's send, pongs, pings, close frames) calls this first, so frames keep their order."""
        corked, self.corked = self.corked, None
        if corked and not self.transport.is_closing():
            self.transport.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def send_keepalive_ping(self) -> None:
        self.uncork()
        super().send_keepalive_ping()

    async def send(self, message: Any) -> None:
        self.uncork()
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            # A handshake refused with our own HTTP response (403 with its reason, 429) is complete;
            # uvicorn does not mark it so and logs "ASGI callable returned without completing
            # handshake" at ERROR for every refusal (an upstream bug), which a client could repeat
            # to flood the log.
            self.handshake_complete = True

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
        self.uncork()
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
        self.uncork()  # what the input makes websockets answer (a pong, a close) goes after them
        super().data_received(data)
