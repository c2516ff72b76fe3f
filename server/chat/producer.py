"""Generating one reply: relay the backend's pieces to the bus until it ends, fails, times out
or is stopped, then store it with the status it ended with, whatever happened.

Knows nothing of sockets: the reply's followers are the bus's business, so the reply goes on
when the socket that asked for it goes away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError

from server import metrics
from server.chat.backends import Backend, BackendError, ContextMessage, ModelRequest, ReplyStats
from server.chat.checkpoints import ReplyCheckpoints
from server.chat.commit_points import store_reply
from server.config import Settings
from server.db import conversations, tree
from server.db.store import Store
from server.db.uow import Database, DatabaseUnavailable
from server.domain import MessageRecord, ModelSettings, ReplyMeta
from server.protocol.codes import ErrorCode
from server.protocol.frames import storable_text
from server.replies.ports import ReplyPublishing
from server.replies.reply import LiveReply, Outcome

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Draft:
    """What is known of the reply besides its text (which the LiveReply holds: one copy)."""

    received_at: float  # perf_counter() when the user's message arrived
    stats: ReplyStats = field(default_factory=ReplyStats)
    first_token_ms: int | None = None

    def meta(self, error: str | None) -> ReplyMeta:
        return ReplyMeta(self.stats.model, self.stats.prompt_tokens, self.stats.completion_tokens,
                         self.first_token_ms, error)

    def first_piece(self) -> None:
        elapsed = time.perf_counter() - self.received_at
        self.first_token_ms = round(elapsed * 1000)
        metrics.FIRST_DELTA_SECONDS.observe(elapsed)


@dataclass(frozen=True, slots=True)
class ReplyDeps:
    """What generating a reply needs."""

    db: Database
    bus: ReplyPublishing
    backend: Backend
    settings: Settings
    checkpoints: ReplyCheckpoints  # keeps a long reply's text so far for the crash sweep
    # Told of every reply stored (a conversation's first one may earn a title); must not block.
    after_reply: Callable[[MessageRecord, MessageRecord], None] | None = None


async def produce(deps: ReplyDeps, reply: LiveReply, message: MessageRecord, received_at: float) -> None:
    """Generate, store and finish `reply`: its followers always get an end, even on a bug."""
    outcome = Outcome(None, ErrorCode.INTERNAL)
    try:
        outcome = await _generate_and_store(deps, reply, message, received_at)
    except Exception:
        log.exception("reply %s to %s failed", reply.id, message.id)
    finally:
        await deps.bus.finish(reply, outcome)


async def _generate_and_store(deps: ReplyDeps, reply: LiveReply, message: MessageRecord, received_at: float) -> Outcome:
    draft = Draft(received_at)
    status, detail = "interrupted", None
    try:
        context, settings = await _context(deps, message)
        turn = ModelRequest(message.conversation_id, message.content, context, draft.stats,
                            settings.system_prompt, settings.model)

        async def publish(piece: str) -> None:
            piece = storable_text(piece)
            if not piece:
                return
            if not reply.pieces:
                draft.first_piece()
            await deps.bus.publish(reply, piece)

        deps.checkpoints.track(reply)
        try:
            status, detail = await stream_reply(deps.backend, turn, reply, publish, deps.settings.llm_timeout_s)
        finally:
            deps.checkpoints.forget(reply)
    except DatabaseUnavailable:
        status, detail = "error", "the conversation could not be read from the database"
    if status == "deleted":
        return Outcome(None, ErrorCode.NOT_FOUND)
    try:
        # Shielded: a cancelled producer (the loop closing) still stores what it has.
        stored = await asyncio.shield(store_reply(deps.db, reply.user_id, message, reply.id, reply.content,
                                                  status, draft.meta(detail)))
    except DatabaseUnavailable:
        log.error("reply %s to %s not stored: database unavailable", reply.id, message.id, exc_info=True)
        metrics.TURNS.labels("unavailable").inc()
        return Outcome(None, ErrorCode.UNAVAILABLE)
    except IntegrityError:
        # Its id is taken: another process took this one for dead (its lease ran out while the
        # database was out of reach) and stored the reply as interrupted. That row is the reply.
        swept = await deps.db.read(lambda store: store.message_of(reply.user_id, reply.id))
        if swept is None:
            raise
        log.warning("reply %s to %s was stored as interrupted by another process meanwhile", reply.id, message.id)
        return Outcome(swept)
    metrics.TURNS.labels(status).inc()
    if stored is None:  # the conversation was deleted while the reply was being stored
        return Outcome(None, ErrorCode.NOT_FOUND)
    if deps.after_reply is not None:
        deps.after_reply(message, stored)
    return Outcome(stored)


async def _context(deps: ReplyDeps, message: MessageRecord) -> tuple[list[ContextMessage], ModelSettings]:
    """What the backend sees before `message`, and the conversation's settings: one read, and
    none at all for a backend that wants neither (echo)."""
    wanted = deps.backend.context_messages
    if not wanted and not deps.backend.uses_settings:
        return [], ModelSettings()

    def read(store: Store) -> tuple[list[MessageRecord], ModelSettings]:
        path = tree.context_path(store, message, wanted)
        return path, conversations.model_settings(store, message.conversation_id) or ModelSettings()

    page, settings = await deps.db.read(read)
    return [ContextMessage(m.role, m.content, m.status) for m in page], settings


async def stream_reply(backend: Backend, turn: ModelRequest, reply: LiveReply,
                       publish: Callable[[str], Awaitable[None]], timeout_s: float) -> tuple[str, str | None]:
    """(status, error detail): complete, error, or why the reply was stopped."""

    async def pump() -> None:
        stream = backend.stream(turn)
        try:
            async for piece in stream:
                if piece:
                    await publish(piece)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    # The stream runs in a task of its own, so that a stop (LiveReply.stop) or the timeout can end it
    # at any await, and this one goes on to say how the reply ended.
    pumping = asyncio.ensure_future(pump())
    reply.on_stop = pumping.cancel
    if reply.stop_reason is not None:  # stopped before it began
        pumping.cancel()
    try:
        async with asyncio.timeout(timeout_s):
            await pumping  # when this task is cancelled (or times out), so is the stream, first
    except asyncio.CancelledError:
        this = asyncio.current_task()
        if this is not None and this.cancelling():
            raise  # the producer itself is cancelled, not the reply stopped
        return reply.stop_reason or "cancelled", None
    except TimeoutError:
        return "error", f"the model did not finish its reply within {timeout_s:g} s (CHAT_LLM_TIMEOUT_S)"
    except BackendError as error:
        log.warning("backend %s failed on reply %s: %s", backend.name, reply.id, error)
        return "error", str(error)
    except Exception as error:
        log.error("backend %s failed on reply %s", backend.name, reply.id, exc_info=error)
        return "error", f"the model backend failed unexpectedly ({type(error).__name__})"
    finally:
        reply.on_stop = None
    return "complete", None
