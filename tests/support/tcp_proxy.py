"""A TCP proxy in front of a server whose live connections a test can cut.

A browser's offline mode does not close a WebSocket that is already open, so a test that wants
"the network dropped mid-reply" cuts the connections here instead: both sides see a reset, as
they would when a phone changes networks. It runs its own event loop in a thread, so sync tests
(Playwright's sync API) and async ones can use it alike.

    with TcpProxy(target_port=server.port) as proxy:
        page.goto(f"http://127.0.0.1:{proxy.port}/")
        ...
        proxy.cut()            # every live connection, now
        proxy.refuse = True    # new connections are closed at once until set back to False
        proxy.freeze()         # a pulled cable: nothing moves, nothing is closed ...
        proxy.thaw()           # ... until now (what was held is delivered)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Any


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.requested_port = port
        self.port = 0
        self.refuse = False
        self.accepted = 0  # connections forwarded so far
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._flowing: asyncio.Event | None = None

    # -- lifecycle, from the test's thread -------------------------------------------------------
    def start(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def freeze(self) -> None:
        """Stop forwarding, in both directions and for new connections, without closing
        anything: to both ends the other simply stops answering."""
        asyncio.run_coroutine_threadsafe(self._set_flowing(False), self._loop).result(10)

    def thaw(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set_flowing(True), self._loop).result(10)

    def cut(self) -> int:
        """Reset every live connection (both sides); how many there were."""
        return asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(10)

    @property
    def live(self) -> int:
        return len(self._conns)

    # -- on the proxy's loop ---------------------------------------------------------------------
    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.requested_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    async def _cut(self) -> int:
        pairs = list(self._conns)
        self._conns.clear()
        for client, upstream in pairs:
            for writer in (client, upstream):
                _reset(writer)
        return len(pairs)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.refuse:
            _reset(client_w)
            return
        assert self._flowing is not None
        await self._flowing.wait()
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(client_w)
            return
        pair = (client_w, up_w)
        self._conns.add(pair)
        self.accepted += 1
        try:
            await asyncio.gather(_pipe(client_r, up_w, self._flowing), _pipe(up_r, client_w, self._flowing))
        finally:
            self._conns.discard(pair)
            for writer in pair:
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
    try:
        while data := await reader.read(65536):
            await flowing.wait()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a polite FIN: a dropped network, not a goodbye."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
