"""The commit point of a `regenerate`: a new reply to a stored user message, claimed durably before
its `ack`, and remembered by the frame's client_id so that a resend finds it.

One unit of work. It takes the conversation's row lock first (moving the leaf to the user
message, so that the new reply becomes the leaf once stored), and only then looks for a
regeneration with that client_id or a reply in flight to the message: two processes sent the
same regenerate at once see each other's commit, and one of them answers as a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from server.db.store import Store
from server.db.uow import Database, DatabaseUnavailable
from server.domain import Claim, MessageRecord, Regeneration, utcnow


class RegenerationRefused(Exception):
    """Nothing was claimed: `reason` is not_found, busy (a reply to it is in flight) or used (the
    client_id names a message, not a regeneration)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Regenerating:
    user_message: MessageRecord
    reply_id: str  # the new reply (claimed now), or the duplicate's
    duplicate: bool


async def claim_regeneration(db: Database, user_id: str, user_message_id: str, client_id: str | None,
                             claim: Claim, again: bool = False) -> Regenerating:
    """Claim a new reply to the user's message, or find the regeneration its client_id already
    names. `again`: a fresh reply for that client_id (its reply ended interrupted)."""
    for attempt in range(2):
        try:
            return await db.write(lambda store: _claim(store, user_id, user_message_id, client_id, claim, again))
        except _Duplicate as d:  # nothing written (the leaf's move is rolled back with the rest)
            asked_for = d.regeneration.user_message_id
            message = await db.read(lambda store, m=asked_for: store.message_of(user_id, m))  # type: ignore[misc]
            if message is None:
                raise RegenerationRefused("not_found") from None
            return Regenerating(message, d.regeneration.reply_id, duplicate=True)
        except IntegrityError as e:  # the same client_id, or a claim on the message, committed just now
            if attempt == 1:
                raise DatabaseUnavailable(str(e)) from e
    raise AssertionError("unreachable")


def _claim(store: Store, user_id: str, user_message_id: str, client_id: str | None, claim: Claim,
           again: bool) -> Regenerating:
    message = store.message_of(user_id, user_message_id)
    if message is None or message.role != "user":
        raise RegenerationRefused("not_found")
    if not store.point_leaf_at(message.conversation_id, user_id, message.id):  # the row lock
        raise RegenerationRefused("not_found")
    if client_id is not None:
        earlier = store.regeneration(user_id, client_id)
        if earlier is not None and not again:
            if earlier.user_message_id != message.id:
                raise RegenerationRefused("used")
            raise _Duplicate(earlier)
        if earlier is None and store.by_client_id(user_id, client_id) is not None:  # a message's
            raise RegenerationRefused("used")
    if store.in_flight_for(message.id) is not None:
        raise RegenerationRefused("busy")
    store.claim_reply(message, user_id, claim)
    if client_id is not None:
        store.remember_regeneration(user_id, Regeneration(client_id, message.id, claim.reply_id), utcnow())
    return Regenerating(message, claim.reply_id, duplicate=False)


class _Duplicate(Exception):
    def __init__(self, regeneration: Regeneration):
        super().__init__(regeneration.client_id)
        self.regeneration = regeneration
