"""The client's one socket: opening it, telling a refusal from a failure, and trying again with backoff.

The settings are read from the client at each use, so a change to `chat.retries` (or the token the
server minted) applies to the next attempt. A frame sent while no socket is open is dropped: what
must not be lost is sent again by the client once a new socket is adopted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .errors import ChatError, ConnectionFailed, Refused

log = logging.getLogger("server.client")

# Close codes after which trying again cannot help: the server refuses this client or its frames.
FATAL_CLOSE: Final = {1007: "invalid UTF-8 sent", 1008: "policy: auth or origin refused, token expired, or flooding",
                      1009: "a frame over the size limit sent"}
REFUSAL_REASONS: Final = {
    403: "HTTP 403: the token or the origin was refused",
    429: "HTTP 429: too many new users from this address, try again later",
    1008: "close 1008: the token or the origin was refused (policy)",
    1013: "close 1013: try again later (too many sockets for this user, or too many new users from this address)",
}


class Settings(Protocol):
    """What a connection reads of its client (a `ChatClient`)."""

    @property
    def url(self) -> str: ...
    @property
    def token(self) -> str | None: ...
    @property
    def conversation_id(self) -> str | None: ...
    @property
    def sync(self) -> bool: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def origin(self) -> str | None: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def ping_interval(self) -> float | None: ...
    @property
    def retries(self) -> int: ...
    @property
    def backoff(self) -> float: ...
    @property
    def max_backoff(self) -> float: ...


class Connection:
    """The socket in use (`ws`, None between sockets), its generation `gen`, and the lock that
    keeps frames from interleaving with the adoption of a new socket."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.ws: ClientConnection | None = None
        self.gen = 0
        self.send_lock = asyncio.Lock()

    def adopt(self, ws: ClientConnection) -> None:
        self.ws, self.gen = ws, self.gen + 1

    def delay(self, attempt: int) -> float:
        s = self._settings
        return min(s.max_backoff, s.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)

    async def send(self, frame: dict[str, Any]) -> None:
        """Lost with the socket when it drops; whatever must not be lost is sent again on reconnect."""
        ws = self.ws
        if ws is None:
            return
        timeout = self._settings.connect_timeout
        try:
            await asyncio.wait_for(ws.send(json.dumps(frame, ensure_ascii=False)), timeout)
        except ConnectionClosed:
            pass
        except TimeoutError:  # the peer reads nothing: a dead network; the reader reconnects
            log.warning("a frame could not be sent within %gs; dropping the connection", timeout)
            ws.transport.abort()

    async def read(self, ws: ClientConnection, handle: Callable[[str | bytes], None]) -> int | None:
        """Hand every frame of `ws` to `handle` until it closes; the close code."""
        try:
            async for raw in ws:
                handle(raw)
            return ws.close_code
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None

    def closed_for_good(self, ws: ClientConnection, code: int | None) -> ChatError | None:
        """The error to give up with when reconnecting cannot help, else None."""
        if code not in FATAL_CLOSE:
            return None
        reason = f": {ws.close_reason}" if ws.close_reason else ""
        detail = f"{self._settings.url} closed the connection: {code} ({FATAL_CLOSE[code]}){reason}"
        return Refused(detail, close_code=code) if code == 1008 else ChatError("closed", detail)

    async def open_first(self) -> tuple[ClientConnection, dict[str, Any]]:
        """The first socket, trying again on connection failures, not on refusals."""
        s = self._settings
        last: ChatError | None = None
        for attempt in range(s.retries + 1):
            if attempt:
                await asyncio.sleep(self.delay(attempt - 1))
            try:
                return await self.open()
            except ConnectionFailed as e:
                last = e
        detail = last.detail if last else ""
        raise ConnectionFailed(f"no chat server at {s.url} after {s.retries + 1} attempts: {detail}")

    async def open_again(self) -> tuple[ClientConnection, dict[str, Any]]:
        """A socket in place of one that dropped."""
        s = self._settings
        last: ChatError | None = None
        for attempt in range(s.retries + 1):
            await asyncio.sleep(self.delay(attempt) if attempt else random.uniform(0, s.backoff / 2))
            try:
                return await self.open()
            except ChatError as e:
                # Refusals too: this token was accepted a moment ago, and a server shutting down
                # may refuse handshakes (403) until it is gone; a real refusal is raised at the end.
                last = e
        if isinstance(last, Refused):
            raise last
        raise ConnectionFailed(f"lost the connection to {s.url} and could not reconnect after "
                               f"{s.retries + 1} attempts: {last.detail if last else ''}")

    async def open(self) -> tuple[ClientConnection, dict[str, Any]]:
        """One attempt: the handshake, then the `ready` frame."""
        s = self._settings
        params: dict[str, str] = {}
        if s.conversation_id:
            params["conversation_id"] = s.conversation_id
        if s.sync:
            params["sync"] = "1"
        url = s.url + (("&" if "?" in s.url else "?") + urlencode(params) if params else "")
        headers = dict(s.headers)
        if s.token:
            headers["Authorization"] = f"Bearer {s.token}"
        try:
            ws = await connect(url, additional_headers=headers, origin=s.origin,  # type: ignore[arg-type]
                               open_timeout=s.connect_timeout, ping_interval=s.ping_interval,
                               close_timeout=2, max_size=64 * 2**20)
        except InvalidStatus as e:
            status = e.response.status_code
            if status in REFUSAL_REASONS:
                raise Refused(f"{s.url} refused the connection: {REFUSAL_REASONS[status]}", status=status) from e
            if status >= 500:
                raise ConnectionFailed(f"{s.url} answered the handshake with HTTP {status}") from e
            raise Refused(f"{s.url} refused the connection: HTTP {status}", status=status) from e
        except (OSError, TimeoutError, InvalidHandshake) as e:
            raise ConnectionFailed(f"cannot connect to {s.url}: {e!r}") from e
        try:
            ready = json.loads(await asyncio.wait_for(ws.recv(), s.connect_timeout))
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            reason = e.rcvd.reason if e.rcvd else ""
            if code in REFUSAL_REASONS:
                explained = REFUSAL_REASONS[code] + (f" ({reason})" if reason else "")
                raise Refused(f"{s.url} refused the connection: {explained}", close_code=code) from e
            raise ConnectionFailed(f"{s.url} closed the connection before `ready` (code {code})") from e
        except TimeoutError:
            await ws.close()
            raise ConnectionFailed(f"no `ready` from {s.url} within {s.connect_timeout:g}s") from None
        if not isinstance(ready, dict) or ready.get("type") != "ready":
            await ws.close()
            raise ChatError("internal", f"expected `ready` first, got {str(ready)[:200]}")
        return ws, ready
