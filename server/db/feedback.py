"""A person's rating of an assistant reply: one UPDATE of the message's own row."""

from __future__ import annotations

from sqlalchemy import update

from server.db.schema import messages
from server.db.store import NotFound, Store

m = messages.c


class NotAReply(Exception):
    """The message is the user's own: only replies are rated."""


def rate(store: Store, user_id: str, message_id: str, rating: int, comment: str | None) -> tuple[str, str | None]:
    """Set (or replace) the rating of the user's reply `message_id`: (its conversation, its model).
    NotFound: no such message of the user; NotAReply: a user message."""
    row = store.conn.execute(update(messages)
                             .where(m.id == message_id, m.user_id == user_id, m.role == "assistant")
                             .values(feedback_rating=rating, feedback_comment=comment)
                             .returning(m.conversation_id, m.model)).first()
    if row is not None:
        return row.conversation_id, row.model
    if store.message_of(user_id, message_id) is None:
        raise NotFound(message_id)
    raise NotAReply(message_id)
