"""A turn's two commit points, each its own unit of work, and the switch that stops a reply."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from server.db.store import Message, ReplyMeta, new_id, utcnow
from server.db.uow import Database, DatabaseUnavailable
from server.protocol.frames import ABSENT, MessageFrame

log = logging.getLogger(__name__)

STORE_ATTEMPTS = 3  # a reply is the one thing a turn cannot send again: retry a failed store briefly


class ConversationNotFound(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Accepted:
    message: Message
    duplicate: bool


class TurnControl:
    """Why the current reply should stop, set once: cancelled, interrupted or deleted."""

    __slots__ = ("stopped", "reason")

    def __init__(self) -> None:
        self.stopped = asyncio.Event()
        self.reason: str | None = None

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.stopped.set()


async def accept_message(db: Database, user_id: str, frame: MessageFrame, current: str | None) -> Accepted:
    """Commit the user's message, or find the original when its client_id was seen before."""
    for attempt in range(2):
        try:
            return await _accept_once(db, user_id, frame, current)
        except IntegrityError as e:
            # Another socket committed the same client_id between our check and our insert:
            # the second pass finds it as a duplicate.
            if attempt == 1 or frame.client_id is None:
                raise DatabaseUnavailable(str(e)) from e
    raise AssertionError("unreachable")


async def _accept_once(db: Database, user_id: str, frame: MessageFrame, current: str | None) -> Accepted:
    async with db.unit_of_work() as uow:
        if frame.client_id is not None:
            original = await uow.store.by_client_id(user_id, frame.client_id)
            if original is not None:
                return Accepted(original, duplicate=True)
        now = utcnow()
        explicit = frame.conversation_id is not ABSENT
        conversation_id = frame.conversation_id if explicit else current
        seq = None
        if conversation_id is not None:
            seq = await uow.store.next_seq(conversation_id, user_id, now)
            if seq is None and explicit:
                raise ConversationNotFound(conversation_id)
        if seq is None:  # a new conversation (asked for, none yet, or the current one was deleted)
            conversation_id = await uow.store.create_conversation(user_id, frame.content, now)
            seq = 1
        assert conversation_id is not None
        message = await uow.store.add_message(
            message_id=new_id(), conversation_id=conversation_id, user_id=user_id, seq=seq, role="user",
            content=frame.content, status="complete", client_id=frame.client_id, reply_to=None, now=now)
        await uow.commit()
    log.info("committed user message %s (conversation %s, user %s, client_id %s)",
             message.id, conversation_id, user_id, frame.client_id)
    return Accepted(message, duplicate=False)


async def store_reply(db: Database, user_id: str, reply_to: Message, reply_id: str, content: str,
                      status: str, meta: ReplyMeta) -> Message | None:
    """Commit the assistant's reply; None when its conversation was deleted meanwhile."""
    for attempt in range(STORE_ATTEMPTS):
        try:
            return await _store_reply_once(db, user_id, reply_to, reply_id, content, status, meta)
        except DatabaseUnavailable:
            if attempt == STORE_ATTEMPTS - 1:
                raise
            log.warning("storing reply %s failed; retrying", reply_id, exc_info=True)
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


async def _store_reply_once(db: Database, user_id: str, reply_to: Message, reply_id: str, content: str,
                            status: str, meta: ReplyMeta) -> Message | None:
    async with db.unit_of_work() as uow:
        now = utcnow()
        seq = await uow.store.next_seq(reply_to.conversation_id, user_id, now)
        if seq is None:
            return None
        reply = await uow.store.add_message(
            message_id=reply_id, conversation_id=reply_to.conversation_id, user_id=user_id, seq=seq,
            role="assistant", content=content, status=status, client_id=None, reply_to=reply_to.id, now=now,
            stats=meta)
        await uow.commit()
    log.info("committed %s reply %s to %s (conversation %s, user %s, %d chars)",
             status, reply_id, reply_to.id, reply_to.conversation_id, user_id, len(content))
    return reply
