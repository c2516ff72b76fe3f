"""A conversation as a tree: its paths, a message's siblings, the leaf below a branch.

Every query walks only what it returns: a page of the current branch is a recursive walk up
`parent_id` from where the page ends (one index lookup per message, never the whole tree), a
message's siblings come from the (conversation_id, parent_id) index, and the leaf below a branch
is a walk down that picks the newest child at each step. The same SQL runs on SQLite and
PostgreSQL. Plain functions of a Store, inside the caller's unit of work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import bindparam, false, literal_column, or_, select, update

from server.db.schema import conversations, messages
from server.db.store import PAGE_CONTENT_BYTES, READ_COLUMNS, InvalidBefore, NotFound, Store
from server.domain import MessageRecord, iso


@dataclass(frozen=True, slots=True)
class Branch:
    """A page of a path from the root: its messages oldest first, whether older ones remain,
    the leaf it ends at, and each message's siblings (itself included, oldest first)."""

    messages: list[MessageRecord]
    has_more: bool
    leaf_id: str | None
    siblings: dict[str, list[str]] = field(default_factory=dict)


def _walk_up() -> Any:
    """The path from :start up to the root, nearest first, at most :limit messages."""
    m = messages.alias("m")
    up = (select(messages.c.id.label("id"), messages.c.parent_id.label("parent_id"),
                 literal_column("0").label("depth"))
          .where(messages.c.id == bindparam("start"), messages.c.conversation_id == bindparam("conversation"))
          .cte("up", recursive=True))
    up = up.union_all(select(m.c.id, m.c.parent_id, up.c.depth + 1)
                      .where(m.c.id == up.c.parent_id, up.c.depth + 1 < bindparam("limit")))
    return select(*READ_COLUMNS).join(up, messages.c.id == up.c.id).order_by(up.c.depth)


def _walk_down() -> Any:
    """The newest leaf below :start: at each step the child created last."""
    c = messages.alias("c")
    down = select(bindparam("start", type_=messages.c.id.type).label("id"),
                  literal_column("0").label("depth")).cte("down", recursive=True)
    newest_child = (select(c.c.id).where(c.c.parent_id == down.c.id, c.c.conversation_id == bindparam("conversation"))
                    .order_by(c.c.seq.desc()).limit(1).scalar_subquery())
    down = down.union_all(select(newest_child, down.c.depth + 1).where(down.c.id.is_not(None)))
    return select(down.c.id).where(down.c.id.is_not(None)).order_by(down.c.depth.desc()).limit(1)


_WALK_UP = _walk_up()
_WALK_DOWN = _walk_down()
_LEAF = select(conversations.c.leaf_id).where(conversations.c.id == bindparam("conversation"),
                                             conversations.c.user_id == bindparam("user"))
_IN_CONVERSATION = select(messages.c.id).where(messages.c.id == bindparam("message"),
                                               messages.c.conversation_id == bindparam("conversation"))


def path_up(store: Store, conversation_id: str, start: str, limit: int) -> list[MessageRecord]:
    """Up to `limit` messages of the path from the root to `start`, the nearest ones, oldest first."""
    rows = store.conn.execute(_WALK_UP, {"start": start, "conversation": conversation_id, "limit": limit})
    return [MessageRecord(*row) for row in reversed(list(rows))]


def leaf_of(store: Store, conversation_id: str, user_id: str) -> str | None:
    """The conversation's current leaf; NotFound when it is not the user's."""
    row = store.conn.execute(_LEAF, {"conversation": conversation_id, "user": user_id}).first()
    if row is None:
        raise NotFound(conversation_id)
    return row.leaf_id  # type: ignore[no-any-return]


def branch(store: Store, conversation_id: str, user_id: str, before: str | None, limit: int,
           leaf: str | None = None) -> Branch:
    """A page of the path from the root to the current leaf (or to `leaf`), the newest `limit`
    messages older than `before` on it, with each message's siblings. At most about
    PAGE_CONTENT_BYTES of content, and always at least one message."""
    current = leaf_of(store, conversation_id, user_id)
    if leaf is not None:
        if store.conn.execute(_IN_CONVERSATION, {"message": leaf, "conversation": conversation_id}).first() is None:
            raise NotFound(leaf)
        current = leaf
    if current is None:
        return Branch([], False, None)
    start = current
    if before is not None:
        found = store.message_of(user_id, before)
        if found is None or found.conversation_id != conversation_id:
            raise InvalidBefore(before)
        if found.parent_id is None:
            return Branch([], False, current)
        start = found.parent_id
    path = path_up(store, conversation_id, start, limit + 1)  # one more: are there older ones?
    has_more = len(path) > limit
    page: list[MessageRecord] = []
    size = 0
    for message in reversed(path[-limit:]):  # newest first, to cut the page by size
        size += len(orjson.dumps(message.content))
        if page and size > PAGE_CONTENT_BYTES:
            has_more = True
            break
        page.append(message)
    page.reverse()
    return Branch(page, has_more, current, siblings(store, conversation_id, page))


def siblings(store: Store, conversation_id: str, page: list[MessageRecord]) -> dict[str, list[str]]:
    """For each message of `page`, the ids of the messages with the same parent, oldest first."""
    if not page:
        return {}
    parents = {m.parent_id for m in page if m.parent_id is not None}
    roots = any(m.parent_id is None for m in page)
    query = (select(messages.c.parent_id, messages.c.id)
             .where(messages.c.conversation_id == conversation_id,
                    or_(messages.c.parent_id.in_(parents) if parents else false(),
                        messages.c.parent_id.is_(None) if roots else false()))
             # `seq + 0`: SQLite would otherwise read the whole conversation through the
             # (conversation_id, seq) index for its order, instead of the few rows of the
             # (conversation_id, parent_id) index, sorted after (bench/history_depth.py).
             .order_by(messages.c.seq + 0))
    by_parent: dict[str | None, list[str]] = {}
    for parent_id, message_id in store.conn.execute(query):
        by_parent.setdefault(parent_id, []).append(message_id)
    return {m.id: by_parent.get(m.parent_id, [m.id]) for m in page}


def select_branch(store: Store, conversation_id: str, user_id: str, message_id: str) -> str:
    """Make the branch through `message_id` current: the leaf becomes the newest leaf below it.
    NotFound when the message is not of that conversation of the user."""
    if store.conn.execute(_IN_CONVERSATION, {"message": message_id, "conversation": conversation_id}).first() is None:
        raise NotFound(message_id)
    leaf = store.conn.execute(_WALK_DOWN, {"start": message_id, "conversation": conversation_id}).scalar()
    assert leaf is not None
    moved = store.conn.execute(update(conversations)
                               .where(conversations.c.id == conversation_id, conversations.c.user_id == user_id)
                               .values(leaf_id=leaf).returning(conversations.c.id)).first()
    if moved is None:
        raise NotFound(conversation_id)
    return str(leaf)


def tree(store: Store, conversation_id: str, user_id: str) -> dict[str, Any]:
    """The whole tree without contents, oldest first, and the current leaf."""
    leaf = leaf_of(store, conversation_id, user_id)
    m = messages.c
    rows = store.conn.execute(select(m.id, m.parent_id, m.role, m.status, m.created_at, m.reply_to)
                              .where(m.conversation_id == conversation_id).order_by(m.seq))
    items = []
    for row in rows:
        item: dict[str, Any] = {"id": row.id, "parent_id": row.parent_id, "role": row.role, "status": row.status,
                                "created_at": iso(row.created_at)}
        if row.reply_to is not None:
            item["reply_to"] = row.reply_to
        items.append(item)
    return {"leaf_id": leaf, "items": items}


def context_path(store: Store, message: MessageRecord, limit: int) -> list[MessageRecord]:
    """What the model sees before `message`: the nearest `limit` messages of the path from the
    root to its parent, oldest first; never a message of another branch."""
    if message.parent_id is None or limit <= 0:
        return []
    return path_up(store, message.conversation_id, message.parent_id, limit)


def every_message(store: Store, conversation_id: str) -> list[MessageRecord]:
    """Every message of the tree, with its feedback, in the order they were stored."""
    rows = store.conn.execute(select(*READ_COLUMNS).where(messages.c.conversation_id == conversation_id)
                              .order_by(messages.c.seq))
    return [MessageRecord(*row) for row in rows]


def current_path(store: Store, conversation_id: str, user_id: str) -> list[MessageRecord]:
    """The whole current branch, root first; NotFound when the conversation is not the user's."""
    leaf = leaf_of(store, conversation_id, user_id)
    if leaf is None:
        return []
    depth = store.conn.execute(select(conversations.c.last_seq).where(conversations.c.id == conversation_id)).scalar()
    return path_up(store, conversation_id, leaf, int(depth or 0) + 1)  # no path is longer than the tree
