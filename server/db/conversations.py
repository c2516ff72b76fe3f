"""A conversation's own fields: its title, its settings, and the list a person pages through.

Plain functions of a Store, inside the caller's unit of work. A conversation is always looked up
with its user: someone else's is the same as none.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from server.db.schema import conversations
from server.db.store import InvalidBefore, Store
from server.domain import ModelSettings, iso

c = conversations.c
COLUMNS = (c.id, c.title, c.created_at, c.updated_at, c.model, c.system_prompt, c.title_source)
SETTINGS = frozenset({"title", "system_prompt", "model"})
_SETTINGS = select(c.system_prompt, c.model).where(c.id == bindparam("conversation"))  # built once: the turn path


def as_dict(row: Any) -> dict[str, Any]:
    """A conversation as the API gives it (the list, PATCH, conversation_updated, export)."""
    return {"id": row.id, "title": row.title, "created_at": iso(row.created_at), "updated_at": iso(row.updated_at),
            "model": row.model, "system_prompt": row.system_prompt, "title_source": row.title_source}


def get(store: Store, conversation_id: str, user_id: str) -> dict[str, Any] | None:
    row = store.conn.execute(select(*COLUMNS).where(c.id == conversation_id, c.user_id == user_id)).first()
    return None if row is None else as_dict(row)


def update_settings(store: Store, conversation_id: str, user_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Set any of title (which then is the user's, never replaced), system_prompt and model (None:
    back to the server's default); the conversation after, or None when it is not the user's."""
    values = {name: changes[name] for name in SETTINGS & changes.keys()}
    if "title" in values:
        values["title_source"] = "user"
    if not values:
        return get(store, conversation_id, user_id)
    row = store.conn.execute(update(conversations).where(c.id == conversation_id, c.user_id == user_id)
                             .values(**values).returning(*COLUMNS)).first()
    return None if row is None else as_dict(row)


def title_by_model(store: Store, conversation_id: str, title: str) -> tuple[str, dict[str, Any]] | None:
    """Give the conversation the model's title unless someone else titled it meanwhile (a rename
    between the reply and this write stands: the condition is checked by the UPDATE itself).
    (its user, the conversation), or None when nothing changed."""
    row = store.conn.execute(update(conversations).where(c.id == conversation_id, c.title_source == "words")
                             .values(title=title, title_source="model").returning(c.user_id, *COLUMNS)).first()
    return None if row is None else (row.user_id, as_dict(row))


def model_settings(store: Store, conversation_id: str) -> ModelSettings | None:
    row = store.conn.execute(_SETTINGS, {"conversation": conversation_id}).first()
    return None if row is None else ModelSettings(row.system_prompt, row.model)


def untitled_model(store: Store, conversation_id: str) -> str | None:
    """The model of a conversation that still has its first-words title ("" for the server's
    default); None when it was titled by the model or its user, or is gone."""
    row = store.conn.execute(select(c.title_source, c.model).where(c.id == conversation_id)).first()
    if row is None or row.title_source != "words":
        return None
    return row.model or ""


def page(store: Store, user_id: str, before: str | None = None, limit: int = 50,
         words: list[str] | None = None) -> tuple[list[dict[str, Any]], bool]:
    """A page of the user's conversations, newest `updated_at` first (then by id), older than the
    conversation `before` (the last of the previous page), and whether more remain; with `words`,
    only those whose title holds every one of them (case-insensitive). Keyset paging: every
    conversation is reachable, however many there are."""
    query = select(*COLUMNS).where(c.user_id == user_id, *_title_holds(store, words or []))
    if before is not None:
        anchor = store.conn.execute(select(c.updated_at).where(c.id == before, c.user_id == user_id)).scalar()
        if anchor is None:
            raise InvalidBefore(before)
        query = query.where(or_(c.updated_at < anchor, and_(c.updated_at == anchor, c.id > before)))
    rows = list(store.conn.execute(query.order_by(c.updated_at.desc(), c.id).limit(limit + 1)))
    return [as_dict(r) for r in rows[:limit]], len(rows) > limit


def _title_holds(store: Store, words: list[str]) -> list[ColumnElement[bool]]:
    # PostgreSQL's lower() knows every alphabet; SQLite's only ASCII, hence casefold(), a function
    # the engine gives every SQLite connection (engine.py). Scans the user's conversations only.
    fold = func.casefold if store.conn.dialect.name == "sqlite" else func.lower
    return [fold(c.title).like(fold(_contains(w)), escape="\\") for w in words]


def _contains(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
