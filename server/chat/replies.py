"""Streaming one reply: relay the backend's pieces until it ends, fails, times out or is stopped.

Knows nothing of sockets or the database: it sends through a callback and fills a Draft, which
the caller stores whatever the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from server import metrics
from server.chat.backends import Backend, BackendError, ChatTurn, ReplyStats
from server.chat.turns import TurnControl
from server.db.store import ReplyMeta
from server.web.socket import Disconnected

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Draft:
    """The reply so far: only what the client was sent, so done.content equals the deltas."""

    reply_id: str
    received_at: float  # perf_counter() when the user's message arrived
    parts: list[str] = field(default_factory=list)
    stats: ReplyStats = field(default_factory=ReplyStats)
    first_token_ms: int | None = None

    @property
    def content(self) -> str:
        return "".join(self.parts)

    def meta(self, error: str | None) -> ReplyMeta:
        return ReplyMeta(self.stats.model, self.stats.prompt_tokens, self.stats.completion_tokens,
                         self.first_token_ms, error)

    def add(self, piece: str) -> None:
        if not self.parts:
            elapsed = time.perf_counter() - self.received_at
            self.first_token_ms = round(elapsed * 1000)
            metrics.FIRST_DELTA_SECONDS.observe(elapsed)
        self.parts.append(piece)


async def stream_reply(backend: Backend, turn: ChatTurn, draft: Draft, send: Callable[[str], Awaitable[None]],
                       control: TurnControl, timeout_s: float) -> tuple[str, str | None]:
    """(status, error detail): complete, error, interrupted (client gone), or control's reason."""

    async def pump() -> None:
        stream = backend.stream(turn)
        try:
            async for piece in stream:
                if piece:
                    await send(piece)
                    draft.add(piece)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    pumping = asyncio.ensure_future(pump())
    stopping = asyncio.ensure_future(control.stopped.wait())
    try:
        done, _ = await asyncio.wait({pumping, stopping}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not pumping.done():
            pumping.cancel()  # the backend's finally closes its upstream stream now
        with contextlib.suppress(BaseException):
            await pumping
    if pumping in done:
        error = pumping.exception()
        if error is None:
            return "complete", None
        if isinstance(error, Disconnected):
            return "interrupted", None
        if isinstance(error, BackendError):
            log.warning("backend %s failed on reply %s: %s", backend.name, draft.reply_id, error)
            return "error", str(error)
        log.error("backend %s failed on reply %s", backend.name, draft.reply_id, exc_info=error)
        return "error", f"the model backend failed unexpectedly ({type(error).__name__})"
    if stopping in done:
        return control.reason or "cancelled", None
    return "error", f"the model did not finish its reply within {timeout_s:g} s (CHAT_LLM_TIMEOUT_S)"
