"""Process-wide bookkeeping: open connections and the replies being generated.

Lets a duplicate on one socket wait for the reply streaming on another, a DELETE stop the
replies in its conversation, and a shutdown stop everything and wait for the stores.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from server import metrics
from server.db.store import Message

log = logging.getLogger(__name__)


class Connection(Protocol):
    async def shut_down(self) -> None: ...


@dataclass(eq=False)
class InFlight:
    """A reply being generated for one user message."""

    user_message_id: str
    conversation_id: str
    stop: Callable[[str], None]
    finished: asyncio.Future[Message | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Hub:
    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self._inflight: dict[str, InFlight] = {}
        self.shutting_down = False

    # -- connections -----------------------------------------------------------------------------
    def add(self, conn: Connection) -> None:
        self.connections.add(conn)
        metrics.SOCKETS_OPEN.inc()

    def remove(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            metrics.SOCKETS_OPEN.dec()

    # -- replies in flight -----------------------------------------------------------------------
    def in_flight(self, user_message_id: str) -> InFlight | None:
        return self._inflight.get(user_message_id)

    def claim(self, user_message_id: str, conversation_id: str, stop: Callable[[str], None]) -> InFlight | None:
        """Register a reply for this message; None if another one is already being generated."""
        if user_message_id in self._inflight:
            return None
        entry = InFlight(user_message_id, conversation_id, stop)
        self._inflight[user_message_id] = entry
        metrics.REPLIES_IN_FLIGHT.inc()
        return entry

    def release(self, entry: InFlight, stored: Message | None) -> None:
        if self._inflight.get(entry.user_message_id) is entry:
            del self._inflight[entry.user_message_id]
            metrics.REPLIES_IN_FLIGHT.dec()
        if not entry.finished.done():
            entry.finished.set_result(stored)

    def stop_conversation(self, conversation_id: str, reason: str) -> int:
        stopping = [e for e in self._inflight.values() if e.conversation_id == conversation_id]
        for entry in stopping:
            entry.stop(reason)
        return len(stopping)

    # -- shutdown ----------------------------------------------------------------------------------
    async def shut_down(self, timeout_s: float) -> None:
        """Stop every reply (stored as interrupted), close every socket with 1001, and wait."""
        self.shutting_down = True
        conns = list(self.connections)
        if not conns:
            return
        log.info("shutting down: closing %d socket(s), %d reply(ies) in flight", len(conns), len(self._inflight))
        done, pending = await asyncio.wait([asyncio.ensure_future(c.shut_down()) for c in conns], timeout=timeout_s)
        if pending:
            log.error("%d socket(s) did not close within %.1fs", len(pending), timeout_s)
        for task in done:
            if task.exception() is not None:
                log.error("closing a socket failed", exc_info=task.exception())
