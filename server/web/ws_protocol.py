"""uvicorn's WebSocket protocol, with a closing handshake that survives a client still sending.

When a frame breaks a limit (1009 too big, 1007 invalid UTF-8), uvicorn writes the close frame
and closes the TCP socket at once. If the client is still sending (a fragmented or compressed
bomb), closing with unread input makes the kernel answer with a reset, and the client may never
read the close code. Here the close frame is followed by a half-close (FIN), as the websockets
library asks for, and the socket keeps reading, and discarding, until the client closes its side
or a short timer runs out.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

DRAIN_S = 2.0


class ChatWebSocketProtocol(WebSocketsSansIOProtocol):
    draining = False

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
