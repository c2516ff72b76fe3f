"""What the chat layer needs of a socket: send a frame, know whether it would wait, and hear
that the client is gone. `web/` implements it; `chat/` never imports `web/`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class Disconnected(Exception):
    """The client is gone (closed, reset, or too slow to read what we send)."""


@dataclass(slots=True)
class Incoming:
    text: str | None = None
    binary: bool = False


class Sink(Protocol):
    """Where a reply's frames go."""

    async def send(self, frame: dict[str, Any]) -> None:
        """Send a frame, or raise Disconnected (a client that does not read is cut off)."""
        ...

    def writable(self) -> bool:
        """True when a send now completes without waiting for the client to read."""
        ...


class ClientSocket(Sink, Protocol):
    """A whole socket: a sink that also reads, and closes with a code."""

    async def receive(self) -> Incoming: ...

    async def close(self, code: int, reason: str = "") -> None: ...
