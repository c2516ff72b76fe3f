"""The open sockets of this process, so that a shutdown can close every one of them."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from server import metrics
from server.replies.ports import ReplyStopping

log = logging.getLogger(__name__)


class Connection(Protocol):
    async def shut_down(self) -> None: ...


class Hub:
    def __init__(self, bus: ReplyStopping) -> None:
        self.bus = bus
        self.connections: set[Connection] = set()
        self.shutting_down = False

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)
        metrics.SOCKETS_OPEN.inc()

    def remove(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            metrics.SOCKETS_OPEN.dec()

    async def shut_down(self, timeout_s: float) -> None:
        """Stop every reply (stored as interrupted, followers told), then close every socket with 1001."""
        self.shutting_down = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        await self.bus.shut_down(timeout_s)
        conns = list(self.connections)
        if not conns:
            return
        log.info("shutting down: closing %d socket(s)", len(conns))
        closing = [asyncio.ensure_future(c.shut_down()) for c in conns]
        done, pending = await asyncio.wait(closing, timeout=max(0.5, deadline - loop.time()))
        if pending:
            log.error("%d socket(s) did not close within %.1fs", len(pending), timeout_s)
        for task in done:
            if task.exception() is not None:
                log.error("closing a socket failed", exc_info=task.exception())
