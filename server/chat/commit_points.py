"""A turn's two commit points, each its own unit of work."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from server.db.store import Store
from server.db.uow import Database, DatabaseUnavailable
from server.domain import Claim, MessageRecord, ReplyMeta, new_id, unsaved
from server.protocol.frames import ABSENT, MessageFrame, known_id
from server.recovery import leases

log = logging.getLogger(__name__)

STORE_ATTEMPTS = 3  # a reply is the one thing a turn cannot send again: retry a failed store briefly


class ConversationNotFound(Exception):
    pass


class MessageNotFound(Exception):
    """A parent_id (or reply_to) that names no message of this user's conversation."""


@dataclass(frozen=True, slots=True)
class Accepted:
    message: MessageRecord
    duplicate: bool
    regenerated: bool = False  # the client_id named a regenerate of `message`: answer as its resend


async def accept_message(db: Database, user_id: str, frame: MessageFrame, current: str | None,
                         claim: Claim) -> Accepted:
    """Commit the user's message with the claim on its reply, or find the original when its
    client_id was seen before (then nothing is written)."""
    accepted = await _append_to_conversation(db, user_id, frame, current, claim)
    if accepted is None:  # a duplicate, or a conversation not found: the full unit decides
        for attempt in range(2):
            try:
                accepted = await db.write(_accept(user_id, frame, current, claim))
                break
            except IntegrityError as e:
                # Another process committed the same client_id between our check and our insert:
                # the second pass finds it as a duplicate.
                if attempt == 1 or frame.client_id is None:
                    raise DatabaseUnavailable(str(e)) from e
    assert accepted is not None
    if not accepted.duplicate:
        message = accepted.message
        log.info("committed user message %s (conversation %s, user %r, client_id %r)",
                 message.id, message.conversation_id, user_id, frame.client_id)
    return accepted


def _user_message(frame: MessageFrame, conversation_id: str, parent_id: str | None = None) -> MessageRecord:
    return unsaved(message_id=new_id(), conversation_id=conversation_id, role="user", content=frame.content,
                   status="complete", client_id=frame.client_id, parent_id=parent_id)


async def _append_to_conversation(db: Database, user_id: str, frame: MessageFrame,
                                  current: str | None, claim: Claim) -> Accepted | None:
    """The common cases in one write: a new message to a conversation the user has, or the
    first message of a new one. None when nothing was written (see `_accept`)."""
    if frame.parent_id is not ABSENT:
        return None  # an edit: the full unit
    conversation_id = frame.conversation_id if frame.conversation_id is not ABSENT else current
    if conversation_id is not None and not known_id(conversation_id):
        return None
    try:
        if conversation_id is None:
            stored = await db.start_conversation(_user_message(frame, new_id()), user_id, claim)
        else:
            stored = await db.append_message(_user_message(frame, conversation_id), user_id, claim)
    except IntegrityError:  # the same client_id committed by another socket just now
        return None
    return None if stored is None else Accepted(stored, duplicate=False)


def _accept(user_id: str, frame: MessageFrame, current: str | None, claim: Claim) -> Callable[[Store], Accepted]:
    """The unit that tells the rarer cases apart: a duplicate (the original), a conversation
    asked for that is not the user's (ConversationNotFound), or a current one that was deleted
    (a new conversation). The writes are the store's own, as on the common path."""

    def work(store: Store) -> Accepted:
        original = _original(store, user_id, frame)
        if original is not None:
            return original
        if frame.parent_id is not ABSENT:
            return _edit(store, user_id, frame, current, claim)
        explicit = frame.conversation_id is not ABSENT
        conversation_id = frame.conversation_id if explicit else current
        if explicit and conversation_id is not None and not known_id(conversation_id):
            raise ConversationNotFound(conversation_id)  # longer than any id: no query
        if conversation_id is not None:
            stored = store.append_message(_user_message(frame, conversation_id), user_id, claim)
            if stored is not None:
                return Accepted(stored, duplicate=False)
            # Nothing written: the conversation is not there, or (PostgreSQL, whose statements
            # each see what is committed when they start) its client_id was committed just now.
            original = _original(store, user_id, frame)
            if original is not None:
                return original
            if explicit:
                raise ConversationNotFound(conversation_id)
        # A new conversation: asked for, none yet, or the current one was deleted.
        started = store.start_conversation(_user_message(frame, new_id()), user_id, claim)
        if started is None:  # its client_id was committed just now by another socket
            original = _original(store, user_id, frame)
            if original is None:
                raise IntegrityError("client_id", None, Exception("used meanwhile"))  # the caller's second pass
            return original
        return Accepted(started, duplicate=False)

    return work


def _edit(store: Store, user_id: str, frame: MessageFrame, current: str | None, claim: Claim) -> Accepted:
    """A message under an explicit parent (None: a new root): the parent's conversation unless
    one is named (then it must be the parent's)."""
    parent_id: str | None = frame.parent_id
    named = frame.conversation_id if frame.conversation_id is not ABSENT else None
    if parent_id is not None:
        parent = store.message_of(user_id, parent_id)
        if parent is None or (named is not None and named != parent.conversation_id):
            raise MessageNotFound(parent_id)
        conversation_id: str | None = parent.conversation_id
    else:
        conversation_id = named or (current if frame.conversation_id is ABSENT else None)
    if conversation_id is None:  # a root with no conversation to put it in: a new one
        started = store.start_conversation(_user_message(frame, new_id()), user_id, claim)
        if started is None:
            raise IntegrityError("client_id", None, Exception("used meanwhile"))  # the caller's second pass
        return Accepted(started, duplicate=False)
    if not known_id(conversation_id):
        raise ConversationNotFound(conversation_id)
    stored = store.append_child(_user_message(frame, conversation_id, parent_id), user_id, claim)
    if stored is not None:
        return Accepted(stored, duplicate=False)
    original = _original(store, user_id, frame)
    if original is not None:
        return original
    if parent_id is None:
        raise ConversationNotFound(conversation_id)
    raise MessageNotFound(parent_id)


def _original(store: Store, user_id: str, frame: MessageFrame) -> Accepted | None:
    """What this frame's client_id already names, if any: a duplicate. A message's, or a
    regenerate's (then the user message it answered again, to be answered as that regenerate)."""
    if frame.client_id is None:
        return None
    original = store.by_client_id(user_id, frame.client_id)
    if original is not None:
        return Accepted(original, duplicate=True)
    regeneration = store.regeneration(user_id, frame.client_id)
    if regeneration is None:
        return None
    answered = store.message_of(user_id, regeneration.user_message_id)
    if answered is None:  # its conversation is gone: the client_id stays used, its message with it
        raise ConversationNotFound(regeneration.user_message_id)
    return Accepted(dataclasses.replace(answered, client_id=frame.client_id), duplicate=True, regenerated=True)


async def store_reply(db: Database, user_id: str, reply_to: MessageRecord, reply_id: str, content: str,
                      status: str, meta: ReplyMeta) -> MessageRecord | None:
    """Commit the assistant's reply; None when its conversation was deleted meanwhile."""
    message = unsaved(message_id=reply_id, conversation_id=reply_to.conversation_id, role="assistant",
                      content=content, status=status, reply_to=reply_to.id, stats=meta, parent_id=reply_to.id)
    for attempt in range(STORE_ATTEMPTS):
        try:
            reply = await db.append_message(message, user_id)
            break
        except DatabaseUnavailable:
            if attempt == STORE_ATTEMPTS - 1:
                raise
            log.warning("storing reply %s failed; retrying", reply_id, exc_info=True)
            await asyncio.sleep(0.2 * (attempt + 1))
    if reply is not None:
        log.info("committed %s reply %s to %s (conversation %s, user %r, %d chars)",
                 status, reply_id, reply_to.id, reply_to.conversation_id, user_id, len(content))
    return reply


async def claim_again(db: Database, user_id: str, message: MessageRecord, claim: Claim,
                      lease_grace_s: float | None = None) -> str:
    """A new reply to a message already stored (its earlier one was interrupted, or never came):
    "claimed", "taken" or "gone", as `leases.take_over` says.

    With leases (PostgreSQL, lease_grace_s set) the record is taken over only from this process
    or a dead one. Without (SQLite: one process, one writer), this process is the only one alive,
    and the unit sees whether the message is still there."""
    def work(store: Store) -> str:
        if lease_grace_s is None:
            if store.message_of(user_id, message.id) is None:
                return "gone"
            store.claim_reply(message, user_id, claim)
            claimed = "claimed"
        else:
            claimed = leases.take_over(store, claim.owner, lease_grace_s, message_id=message.id,
                                       reply_id=claim.reply_id, conversation_id=message.conversation_id,
                                       user_id=user_id)
        if claimed == "claimed":
            # The new reply is its earlier one's sibling; it becomes the leaf as that one was.
            store.lead_back_to(message)
        return claimed

    return await db.write(work)
