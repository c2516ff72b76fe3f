"""A WebSocket over raw ASGI: explicit state, bounded sends, and a real abort.

Starlette's WebSocket would do for most of this, but a client that stops reading leaves
uvicorn's `send` waiting for the transport to drain forever; the only way out is to abort the
TCP connection, which needs the transport that uvicorn's protocol object holds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from server.protocol.outgoing import encode
from server.replies.sink import Disconnected, Incoming

log = logging.getLogger(__name__)

Scope = dict[str, Any]


class Socket:
    def __init__(self, receive: Any, send: Any, send_timeout_s: float, http_response: bool = False):
        self._receive = receive
        self.http_response = http_response  # the server can answer a handshake with its own response
        self._send = send
        # Our protocol (ws_protocol.py) when uvicorn runs it: its `write_text` skips the ASGI send.
        self._protocol: Any = getattr(send, "__self__", None)
        self._direct = callable(getattr(self._protocol, "write_text", None))
        self._send_timeout_s = send_timeout_s
        self.open = False  # accepted and not yet closed or disconnected
        self.close_code: int | None = None

    # -- handshake -------------------------------------------------------------------------------
    async def wait_connect(self) -> bool:
        return (await self._receive())["type"] == "websocket.connect"

    async def accept(self) -> None:
        await self._send({"type": "websocket.accept"})
        self.open = True

    async def refuse(self, reason: str = "", status: int = 403, headers: dict[str, str] | None = None) -> None:
        """Before accept: HTTP `status` whose body is `reason` (the "websocket.http.response" ASGI
        extension), so that wscat and browsers' devtools show why; without the extension, a close
        with the reason: 1013 for a 429, 1001 for a 503, else 1008 (uvicorn then answers an empty 403)."""
        if self.http_response:
            raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
            await self._send({"type": "websocket.http.response.start", "status": status,
                              "headers": [(b"content-type", b"text/plain; charset=utf-8"), *raw]})
            await self._send({"type": "websocket.http.response.body", "body": reason.encode()})
        else:
            code = {429: 1013, 503: 1001}.get(status, 1008)
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    # -- frames --------------------------------------------------------------------------------
    async def receive(self) -> Incoming:
        while True:
            event = await self._receive()
            kind = event["type"]
            if kind == "websocket.receive":
                if event.get("text") is not None:
                    return Incoming(text=event["text"])
                return Incoming(binary=True)
            if kind == "websocket.disconnect":
                self.open = False
                self.close_code = self.close_code or event.get("code")
                raise Disconnected()

    async def send(self, frame: dict[str, Any]) -> None:
        """Send a frame, or raise Disconnected; a client that does not read is cut off."""
        if not self.open:
            raise Disconnected()
        data = encode(frame)
        if self._direct and self._protocol.write_text(data):
            # Written to the transport at once: no ASGI message, no wait, nothing to time out.
            return
        message = {"type": "websocket.send", "text": data.decode()}
        try:
            if self.writable():
                # The transport takes it now: nothing to time out, and arming a timer per frame
                # was a tenth of a turn's CPU.
                await self._send(message)
                return
            async with asyncio.timeout(self._send_timeout_s):
                await self._send(message)
        except TimeoutError:
            log.warning("client did not read for %.1fs; dropping the connection", self._send_timeout_s)
            self.abort()
            raise Disconnected() from None
        except (OSError, RuntimeError) as e:  # uvicorn's ClientDisconnected is an OSError
            self.open = False
            raise Disconnected() from e

    def writable(self) -> bool:
        """Whether a send now completes at once: the transport is not asking us to pause."""
        flag = getattr(self._protocol, "writable", None)
        return self.open and (flag is None or flag.is_set())

    async def close(self, code: int, reason: str = "") -> None:
        if not self.open:
            return
        self.open = False
        self.close_code = code
        try:
            async with asyncio.timeout(self._send_timeout_s):
                await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except TimeoutError:
            self.abort()
        except (OSError, RuntimeError):
            pass

    def abort(self) -> None:
        self.open = False
        transport = getattr(self._protocol, "transport", None)
        if transport is not None:
            transport.abort()  # connection_lost then queues the disconnect for receive()
