"""Full-text search of a user's messages (GET /api/search), through the index of search_index.py.

Every word of the query must be in the message, whole and in any case; hits come newest first,
paged by keyset (the last hit's created_at and id), and only ever from the user's own rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, text

from server.db.schema import messages
from server.db.search_index import PG_DOCUMENT, SQLITE_TABLE
from server.db.store import InvalidBefore, Store

WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class Hit:
    conversation_id: str
    message_id: str
    role: str
    content: str
    created_at: datetime


def words_of(q: str) -> list[str]:
    """The words a query asks for, as the index splits text: runs of letters and digits."""
    return WORD.findall(q)


# The user filter, the keyset and the order are the same on both; only the match differs.
_MATCH = {
    "postgresql": f"m.user_id = :user AND {PG_DOCUMENT.replace('content', 'm.content')} "
                  "@@ plainto_tsquery('simple'::regconfig, :query)",
    "sqlite": f"m.rowid IN (SELECT rowid FROM {SQLITE_TABLE} WHERE {SQLITE_TABLE} MATCH :query) AND m.user_id = :user",
}
_AFTER = " AND (m.created_at < :at OR (m.created_at = :at AND m.id < :before))"


def search(store: Store, user_id: str, q: str, before: str | None, limit: int) -> tuple[list[Hit], bool]:
    """The user's messages holding every word of `q`, newest first, older than the hit `before`
    (a message id), at most `limit`, and whether more remain. InvalidBefore: not the user's message."""
    dialect = store.conn.dialect.name
    params: dict[str, Any] = {"user": user_id, "limit": limit + 1,
                              "query": _fts5_query(q) if dialect == "sqlite" else q}
    where = _MATCH[dialect]
    if before is not None:
        at = store.conn.execute(text("SELECT created_at FROM messages WHERE id = :id AND user_id = :user")
                                .bindparams(id=before, user=user_id)
                                .columns(messages.c.created_at)).scalar()
        if at is None:
            raise InvalidBefore(before)
        params.update(at=at, before=before)
        where += _AFTER
    sql = text(f"SELECT m.conversation_id, m.id, m.role, m.content, m.created_at FROM messages m "
               f"WHERE {where} ORDER BY m.created_at DESC, m.id DESC LIMIT :limit")
    if before is not None:  # stored as the column stores it (SQLite: its own text form)
        sql = sql.bindparams(bindparam("at", type_=messages.c.created_at.type))
    statement = sql.columns(messages.c.conversation_id, messages.c.id, messages.c.role, messages.c.content,
                                  messages.c.created_at)
    rows = list(store.conn.execute(statement, params))
    return [Hit(*row) for row in rows[:limit]], len(rows) > limit


def _fts5_query(q: str) -> str:
    """Each word a quoted FTS5 string (so that no word is read as an operator: AND, NEAR, a
    column name), side by side: FTS5 wants them all."""
    return " ".join('"' + w.replace('"', '""') + '"' for w in words_of(q))
