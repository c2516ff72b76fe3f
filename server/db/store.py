"""The repository: every statement the server runs, on a connection a unit of work owns.

Plain synchronous SQLAlchemy Core: the SQLite writer thread runs it directly, everything else
inside one hop into SQLAlchemy's greenlet (see uow.py). It never commits, and never deletes or
rewrites a message to store another one.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Select, bindparam, case, delete, exists, insert, literal_column, or_, select, text, update
from sqlalchemy.engine import Connection

from server.db import sqlite_fast
from server.db.schema import conversations, messages, regenerations, replies_in_flight, server_secrets
from server.domain import (
    Claim,
    MessageRecord,
    Orphan,
    Regeneration,
    ReplyMeta,
    new_id,
    title_from,
    unsaved,
    utcnow,
)

PAGE_CONTENT_BYTES = 1 << 20  # docs/protocol.md: a history page holds about 1 MiB of content at most


MESSAGE_COLUMNS = (
    messages.c.id,
    messages.c.conversation_id,
    messages.c.seq,
    messages.c.role,
    messages.c.content,
    messages.c.status,
    messages.c.client_id,
    messages.c.reply_to,
    messages.c.created_at,
    messages.c.model,
    messages.c.prompt_tokens,
    messages.c.completion_tokens,
    messages.c.first_token_ms,
    messages.c.error,
    messages.c.parent_id,
)
# What a reader shows besides: the person's feedback (never written or returned on the turn path).
READ_COLUMNS = (*MESSAGE_COLUMNS, messages.c.feedback_rating, messages.c.feedback_comment)


# The statements of the turn path, built once: SQLAlchemy then reuses their cache key and
# compiled form instead of building both again on every call (a third of a turn's CPU otherwise).
_p = bindparam
_INSERT_CONVERSATION = insert(conversations)
_INSERT_MESSAGE = insert(messages)
# A conversation's updated_at is when its person last wrote in it: a user message moves it, a reply
# does not. updated_at is indexed (the conversation list's order), so an UPDATE that changes it
# writes new index entries, while one that changes only last_seq (and leaf_id) is a HOT update:
# about a sixth of PostgreSQL's work per turn, measured (docs/benchmarks.md).
# The leaf: a user message becomes the conversation's current leaf; a reply becomes it only while
# the leaf is still the message it answers (a `select` or an edit made while it streamed stands).
# Parameters are named p_<column>: a key named like a column of `conversations` would be added to
# the UPDATE's SET clause by SQLAlchemy.
def _next_seq(user_message: bool, unless_client_id_used: bool = False, where: Any = None,
              also_returning: tuple[Any, ...] = ()) -> Any:
    """Take the conversation's next seq (RETURNING it, and `also_returning`) and move its leaf; no
    row when it is not the user's (or, `unless_client_id_used`, when the message's client_id was
    used before)."""
    c = conversations.c
    if user_message:
        moved: dict[str, Any] = {"updated_at": _p("p_created_at"), "leaf_id": _p("p_id")}
    else:
        moved = {"leaf_id": case((c.leaf_id == _p("p_reply_to"), _p("p_id")), else_=c.leaf_id)}
    guard = [~_client_id_used()] if unless_client_id_used else []
    conditions = [c.id == _p("p_conversation_id"), c.user_id == _p("p_user_id")] if where is None else [where]
    return (update(conversations)
            .where(*conditions, *guard)
            .values(last_seq=c.last_seq + 1, **moved)
            .returning(c.last_seq, *also_returning))


_NEXT_SEQ = _next_seq(user_message=True)
_NEXT_SEQ_OF_REPLY = _next_seq(user_message=False)
def _leaf_and_client_id() -> Any:
    c = conversations.c
    return select(c.leaf_id, _client_id_used().label("taken")).where(
        c.id == _p("p_conversation_id"), c.user_id == _p("p_user_id"))
_OWNS: Select[Any] = select(literal_column("1")).where(conversations.c.id == _p("p_conversation"),
                                                      conversations.c.user_id == _p("p_user"))
_BY_CLIENT_ID = select(*MESSAGE_COLUMNS).where(messages.c.user_id == _p("p_user"),
                                               messages.c.client_id == _p("p_client"))
_REPLIES_TO = select(*MESSAGE_COLUMNS).where(messages.c.reply_to == _p("p_message")).order_by(messages.c.seq)
_SEQ_OF = select(messages.c.seq).where(messages.c.id == _p("p_message"),
                                       messages.c.conversation_id == _p("p_conversation"))
_CHECKPOINT = update(replies_in_flight).where(replies_in_flight.c.user_message_id == _p("p_message"),
                                              replies_in_flight.c.reply_id == _p("p_reply")
                                              ).values(content=_p("p_text"))


def _append_statement(claiming: bool) -> Any:
    """PostgreSQL: take the conversation's next seq and insert the message in one statement.

    Sent on its own it is its own transaction: one round trip instead of BEGIN, SELECT, UPDATE,
    INSERT, COMMIT. For a user message, nothing is inserted when the conversation is not the
    user's or the client_id was used before (a NULL client_id never matches); for a reply, when
    the conversation is gone.

    A user message follows the conversation's current leaf, read under the row's lock (FOR NO
    KEY UPDATE, which the UPDATE takes anyway): two messages sent at once to one conversation
    are chained, never siblings by accident. A reply's parent is the message it answers.

    The same statement keeps `replies_in_flight` true: a user message adds the row of the reply
    it is owed (claiming), a reply removes its own, so knowing what a dead process left costs no
    extra commit.
    """
    f = replies_in_flight.c
    if not claiming:  # a reply: it has no client_id of its own
        next_seq = _next_seq(user_message=False).cte("next_seq")
        appended = _insert_message(seq=next_seq.c.last_seq).cte("appended")
        landed = (delete(replies_in_flight)
                  .where(f.user_message_id == _p("p_reply_to"), f.reply_id == _p("p_id"))
                  .cte("landed"))
        return select(appended.c.seq, appended.c.parent_id, appended.c.id).add_cte(landed)
    c = conversations.c
    locked = (select(c.id, c.leaf_id)
              .where(c.id == _p("p_conversation_id"), c.user_id == _p("p_user_id"), ~_client_id_used())
              .with_for_update(key_share=True)
              .cte("locked"))
    next_seq = _next_seq(user_message=True, where=c.id == locked.c.id,
                         also_returning=(locked.c.leaf_id.label("old_leaf"),)).cte("next_seq")
    return _claiming(_insert_message(seq=next_seq.c.last_seq, parent_id=next_seq.c.old_leaf).cte("appended"))


def _start_statement() -> Any:
    """PostgreSQL: a new conversation, its first message (seq 1) and the claim on its reply, in one
    statement, as _append_statement does for a conversation that exists. Nothing is written when
    the client_id was used before (the caller then finds the original)."""
    c = conversations.c
    started = (insert(conversations)
               .from_select(["id", "user_id", "title", "created_at", "updated_at", "last_seq", "leaf_id"],
                            select(_p("p_conversation_id", type_=c.id.type), _p("p_user_id", type_=c.user_id.type),
                                   _p("p_title", type_=c.title.type), _p("p_created_at", type_=c.created_at.type),
                                   _p("p_created_at", type_=c.updated_at.type), literal_column("1"),
                                   _p("p_id", type_=c.leaf_id.type))
                            .where(~_client_id_used()))
               .returning(c.id)
               .cte("started"))
    return _claiming(_insert_message(seq=literal_column("1"), conversation_id=started.c.id,
                                     source=started).cte("appended"))


def _client_id_used() -> Any:
    """Whether the user sent this client_id before, with a message or a regenerate (one namespace;
    a NULL one never matches)."""
    m, r = messages.c, regenerations.c
    return or_(exists().where(m.user_id == _p("p_user_id"), m.client_id == _p("p_client_id")),
               exists().where(r.user_id == _p("p_user_id"), r.client_id == _p("p_client_id")))


def _insert_message(seq: Any, conversation_id: Any = None, source: Any = None, parent_id: Any = None) -> Any:
    """INSERT … SELECT of the message in the p_<column> parameters, at `seq` (an expression), in
    `conversation_id` and under `parent_id` (expressions; by default their parameters), one row
    per row of `source`."""
    m = messages.c
    columns = [*MESSAGE_COLUMNS, m.user_id]
    given = {"seq": seq, "conversation_id": conversation_id, "parent_id": parent_id}
    # Typed parameters, so that asyncpg is told each one's type in the SELECT list.
    values = [given[col.name] if given.get(col.name) is not None else _p(f"p_{col.name}", type_=col.type)
              for col in columns]
    rows = select(*values) if source is None else select(*values).select_from(source)
    return insert(messages).from_select([col.name for col in columns], rows).returning(m.seq, m.id, m.parent_id)


def _claiming(appended: Any) -> Any:
    """The seq, parent_id and id of `appended` (a CTE inserting a user message), recording the
    claim on its reply."""
    f = replies_in_flight.c
    flight = insert(replies_in_flight).from_select(
        ["user_message_id", "reply_id", "conversation_id", "user_id", "owner", "started_at", "content"],
        select(appended.c.id, _p("p_reply_id", type_=f.reply_id.type),
               _p("p_conversation_id", type_=f.conversation_id.type), _p("p_user_id", type_=f.user_id.type),
               _p("p_owner", type_=f.owner.type), _p("p_created_at", type_=f.started_at.type),
               literal_column("''"))).cte("flight")
    return select(appended.c.seq, appended.c.parent_id, appended.c.id).add_cte(flight)


_LEAF_AND_CLIENT_ID = _leaf_and_client_id()  # SQLite: what a user message's append reads first
APPEND_CLAIMING = _append_statement(claiming=True)  # a user message
APPEND_RELEASING = _append_statement(claiming=False)  # a reply
START_CONVERSATION = _start_statement()
_INSERT_IN_FLIGHT = insert(replies_in_flight)
_DELETE_IN_FLIGHT = delete(replies_in_flight).where(replies_in_flight.c.user_message_id == _p("p_message"),
                                                    replies_in_flight.c.reply_id == _p("p_reply"))


def _row(message: MessageRecord, user_id: str) -> dict[str, Any]:
    """The parameters of an INSERT of `message` (and, as p_<name>, of the append statements)."""
    return {"id": message.id, "conversation_id": message.conversation_id, "user_id": user_id, "seq": message.seq,
            "role": message.role, "content": message.content, "status": message.status,
            "client_id": message.client_id, "reply_to": message.reply_to, "created_at": message.created_at,
            "model": message.model, "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens, "first_token_ms": message.first_token_ms,
            "error": message.error, "parent_id": message.parent_id}


def append_params(message: MessageRecord, user_id: str, claim: Claim | None) -> dict[str, Any]:
    """The parameters of APPEND_CLAIMING (with `claim`) or APPEND_RELEASING; with p_title, of
    START_CONVERSATION."""
    params = {f"p_{k}": v for k, v in _row(message, user_id).items()}
    if claim is not None:
        params.update(p_reply_id=claim.reply_id, p_owner=claim.owner)
    return params


def _flight_row(user_message: MessageRecord, user_id: str, claim: Claim) -> dict[str, Any]:
    return {"user_message_id": user_message.id, "reply_id": claim.reply_id,
            "conversation_id": user_message.conversation_id, "user_id": user_id, "owner": claim.owner,
            "started_at": user_message.created_at, "content": ""}


class NotFound(Exception):
    """No such conversation for this user (someone else's looks the same)."""


class InvalidBefore(Exception):
    """`before` is not a message of that conversation."""


class Store:
    def __init__(self, conn: Connection):
        self.conn = conn

    def ping(self) -> None:
        self.conn.execute(text("SELECT 1"))

    # -- conversations ------------------------------------------------------------------------
    def create_conversation(self, user_id: str, first_content: str, now: datetime) -> str:
        """A new conversation whose first message takes seq 1."""
        conversation_id = new_id()
        self.conn.execute(_INSERT_CONVERSATION, {
            "id": conversation_id, "user_id": user_id, "title": title_from(first_content), "created_at": now,
            "updated_at": now, "last_seq": 1})
        return conversation_id

    def _take_seq(self, message: MessageRecord, user_id: str) -> int | None:
        """Reserve the conversation's next position for `message` and move the leaf as its role
        says (see _next_seq); None when the conversation is not this user's."""
        params = {"p_conversation_id": message.conversation_id, "p_user_id": user_id, "p_id": message.id}
        if message.role == "user":
            rows = self._run(_NEXT_SEQ, {**params, "p_created_at": message.created_at})
        else:
            rows = self._run(_NEXT_SEQ_OF_REPLY, {**params, "p_reply_to": message.reply_to})
        return rows[0][0] if rows else None

    def _run(self, statement: Any, params: dict[str, Any]) -> list[Any]:
        """A statement of the turn path: on SQLite straight to the driver (sqlite_fast.py)."""
        if self.conn.dialect.name == "sqlite":
            return sqlite_fast.run(self.conn, statement, params)
        return list(self.conn.execute(statement, params))

    def owns_conversation(self, conversation_id: str, user_id: str) -> bool:
        result = self.conn.execute(_OWNS, {"p_conversation": conversation_id, "p_user": user_id})
        return result.first() is not None

    def delete_conversation(self, conversation_id: str, user_id: str) -> bool:
        if not self.owns_conversation(conversation_id, user_id):
            return False
        self.conn.execute(delete(messages).where(messages.c.conversation_id == conversation_id))
        self.conn.execute(delete(conversations).where(conversations.c.id == conversation_id))
        # Last, so that it also sees a message appended while this ran: the conversation row's
        # delete waited for that append's commit (and took its message along by the cascade).
        self.conn.execute(delete(replies_in_flight).where(replies_in_flight.c.conversation_id == conversation_id))
        return True

    # -- messages -------------------------------------------------------------------------------
    def add_message(self, *, message_id: str, conversation_id: str, user_id: str, seq: int, role: str,
                    content: str, status: str, client_id: str | None, reply_to: str | None,
                    now: datetime, stats: ReplyMeta | None = None) -> MessageRecord:
        """Insert a message at `seq`, following the conversation's leaf, and make it the leaf (for
        tests and tools that build a conversation by hand; the server appends)."""
        leaf = self.conn.execute(select(conversations.c.leaf_id).where(conversations.c.id == conversation_id)).scalar()
        message = dataclasses.replace(unsaved(
            message_id=message_id, conversation_id=conversation_id, role=role, content=content, status=status,
            client_id=client_id, reply_to=reply_to, now=now, stats=stats, parent_id=leaf), seq=seq)
        self.conn.execute(_INSERT_MESSAGE, _row(message, user_id))
        self.conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(leaf_id=message_id))
        return message

    def append_message(self, message: MessageRecord, user_id: str, claim: Claim | None = None) -> MessageRecord | None:
        """Append `message` (an `unsaved` one) at its conversation's next seq; the stored message, or
        None, and nothing written, when the conversation is not this user's (or is gone) or its
        client_id was used before.

        A user message records `claim` (the reply it is owed) in replies_in_flight; a reply
        removes its own row there (its `reply_to` and `id` name it).

        One statement on PostgreSQL, which can be sent without a transaction around it (the turn
        path sends it through asyncpg: pg_turn_writes.py). SQLite cannot update in a CTE: there
        the same steps run one by one, in the writer's transaction."""
        if message.role == "assistant":  # a reply's parent is the message it answers, always
            message = dataclasses.replace(message, parent_id=message.reply_to)
        if self.conn.dialect.name == "postgresql":
            statement = APPEND_CLAIMING if claim is not None else APPEND_RELEASING
            row = self.conn.execute(statement, append_params(message, user_id, claim)).first()
            return None if row is None else dataclasses.replace(message, seq=row.seq, parent_id=row.parent_id)
        seq = None
        if message.role == "user":
            # One read: the conversation is the user's, its leaf (which the message follows: the
            # writer's transaction is the lock), and whether the client_id was used before.
            found = self._run(_LEAF_AND_CLIENT_ID, {
                "p_conversation_id": message.conversation_id, "p_user_id": user_id,
                "p_client_id": message.client_id})
            if found and found[0][1]:  # (leaf_id, taken)
                return None
            if found:
                message = dataclasses.replace(message, parent_id=found[0][0])
                seq = self._take_seq(message, user_id)
        else:  # a reply has no client_id of its own
            seq = self._take_seq(message, user_id)
        if seq is not None:
            message = dataclasses.replace(message, seq=seq)
            self._run(_INSERT_MESSAGE, _row(message, user_id))
            if claim is not None:
                self._run(_INSERT_IN_FLIGHT, _flight_row(message, user_id, claim))
        if claim is None and message.reply_to is not None:
            # Even when nothing was stored (the conversation is gone), as the statement does.
            self._run(_DELETE_IN_FLIGHT, {"p_message": message.reply_to, "p_reply": message.id})
        return None if seq is None else message

    def append_child(self, message: MessageRecord, user_id: str, claim: Claim) -> MessageRecord | None:
        """Append a user message under `message.parent_id` (None: a new root), an edit, which
        becomes the leaf; None, and nothing written, when the conversation is not this user's,
        the parent is not a message of it, or the client_id was used before. Step by step on
        both databases (an edit is rare): inside a unit of work."""
        if message.client_id is not None and self.client_id_taken(user_id, message.client_id):
            return None
        if message.parent_id is not None and self.conn.execute(_SEQ_OF, {
                "p_message": message.parent_id, "p_conversation": message.conversation_id}).first() is None:
            return None
        seq = self._take_seq(message, user_id)
        if seq is None:
            return None
        message = dataclasses.replace(message, seq=seq)
        self.conn.execute(_INSERT_MESSAGE, _row(message, user_id))
        self.conn.execute(_INSERT_IN_FLIGHT, _flight_row(message, user_id, claim))
        return message

    def start_conversation(self, message: MessageRecord, user_id: str, claim: Claim) -> MessageRecord | None:
        """A new conversation (`message.conversation_id`, titled from its content) with `message`
        as its first (seq 1) and the claim on its reply; None, and nothing written, when the
        client_id was used before.

        One statement on PostgreSQL (START_CONVERSATION); on SQLite the same steps one by one."""
        if self.conn.dialect.name == "postgresql":
            params = {**append_params(message, user_id, claim), "p_title": title_from(message.content)}
            seq = self.conn.execute(START_CONVERSATION, params).scalar()
            return None if seq is None else dataclasses.replace(message, seq=seq, parent_id=None)
        if message.client_id is not None and self.client_id_taken(user_id, message.client_id):
            return None
        now = message.created_at
        self._run(_INSERT_CONVERSATION, {
            "id": message.conversation_id, "user_id": user_id, "title": title_from(message.content),
            "created_at": now, "updated_at": now, "last_seq": 1, "leaf_id": message.id})
        stored = dataclasses.replace(message, seq=1, parent_id=None)
        self._run(_INSERT_MESSAGE, _row(stored, user_id))
        self._run(_INSERT_IN_FLIGHT, _flight_row(stored, user_id, claim))
        return stored

    # -- replies in flight --------------------------------------------------------------------------
    def claim_reply(self, user_message: MessageRecord, user_id: str, claim: Claim) -> None:
        """Record that `claim.owner` generates the reply to `user_message` (replacing an older claim)."""
        self.conn.execute(delete(replies_in_flight).where(replies_in_flight.c.user_message_id == user_message.id))
        self.conn.execute(_INSERT_IN_FLIGHT, _flight_row(user_message, user_id, claim))

    def checkpoint_replies(self, texts: list[tuple[str, str, str]]) -> None:
        """Keep the text so far of long replies, (user_message_id, reply_id, text) each, for the
        sweep should their process die: one statement, executed for each."""
        if texts:
            self.conn.execute(_CHECKPOINT, [{"p_message": message, "p_reply": reply, "p_text": text}
                                            for message, reply, text in texts])

    def orphans(self, live_owner: str) -> list[Orphan]:
        """Replies in flight that no live process generates: every owner but `live_owner`."""
        f = replies_in_flight.c
        rows = self.conn.execute(select(f.user_message_id, f.reply_id, f.conversation_id, f.user_id, f.content)
                                 .where(f.owner != live_owner))
        return [Orphan(*row) for row in rows]

    def own_claims(self, owner: str, started_before: datetime) -> list[Orphan]:
        """`owner`'s replies in flight that started before `started_before`."""
        f = replies_in_flight.c
        rows = self.conn.execute(select(f.user_message_id, f.reply_id, f.conversation_id, f.user_id, f.content)
                                 .where(f.owner == owner, f.started_at < started_before))
        return [Orphan(*row) for row in rows]

    def release_claim(self, orphan: Orphan, owner: str) -> Orphan | None:
        """Remove `owner`'s claim on that reply, if it still holds it; what it held (its text so
        far), or None: the reply was stored meanwhile, or another process took it over."""
        f = replies_in_flight.c
        content = self.conn.execute(
            delete(replies_in_flight)
            .where(f.user_message_id == orphan.user_message_id, f.reply_id == orphan.reply_id, f.owner == owner)
            .returning(f.content)).scalar()
        return None if content is None else dataclasses.replace(orphan, content=content)

    def store_orphan(self, orphan: Orphan) -> MessageRecord | None:
        """Store what is known of a dead process's reply as `interrupted`, and release its claim."""
        return self.append_message(unsaved(
            message_id=orphan.reply_id, conversation_id=orphan.conversation_id, role="assistant",
            content=orphan.content, status="interrupted", reply_to=orphan.user_message_id,
            parent_id=orphan.user_message_id), orphan.user_id)

    def message_of(self, user_id: str, message_id: str) -> MessageRecord | None:
        row = self.conn.execute(select(*MESSAGE_COLUMNS).where(messages.c.id == message_id,
                                                                messages.c.user_id == user_id)).first()
        return MessageRecord(*row) if row else None

    def latest_reply(self, user_id: str, user_message_id: str) -> MessageRecord | None:
        row = self.conn.execute(select(*MESSAGE_COLUMNS)
                                .where(messages.c.reply_to == user_message_id, messages.c.user_id == user_id)
                                .order_by(messages.c.seq.desc()).limit(1)).first()
        return MessageRecord(*row) if row else None

    def by_client_id(self, user_id: str, client_id: str) -> MessageRecord | None:
        """The message sent with that client_id (not a regenerate's: see `regeneration`)."""
        row = self.conn.execute(_BY_CLIENT_ID, {"p_user": user_id, "p_client": client_id}).first()
        return MessageRecord(*row) if row else None

    def client_id_taken(self, user_id: str, client_id: str) -> bool:
        """Whether a message or a regenerate of the user carried that client_id (one namespace)."""
        return self.by_client_id(user_id, client_id) is not None or self.regeneration(user_id, client_id) is not None

    def regeneration(self, user_id: str, client_id: str) -> Regeneration | None:
        r = regenerations.c
        row = self.conn.execute(select(r.user_message_id, r.reply_id)
                                .where(r.user_id == user_id, r.client_id == client_id)).first()
        return None if row is None else Regeneration(client_id, row.user_message_id, row.reply_id)

    def remember_regeneration(self, user_id: str, regeneration: Regeneration, now: datetime) -> None:
        """Record (or, for a fresh reply after an interrupted one, move) a regenerate's client_id."""
        r = regenerations.c
        moved = self.conn.execute(update(regenerations)
                                  .where(r.user_id == user_id, r.client_id == regeneration.client_id)
                                  .values(reply_id=regeneration.reply_id).returning(r.reply_id)).first()
        if moved is None:
            self.conn.execute(insert(regenerations).values(
                user_id=user_id, client_id=regeneration.client_id, user_message_id=regeneration.user_message_id,
                reply_id=regeneration.reply_id, created_at=now))

    def in_flight_for(self, user_message_id: str) -> str | None:
        """The reply in flight to that message, if any (its claim's reply id)."""
        f = replies_in_flight.c
        return self.conn.execute(select(f.reply_id).where(f.user_message_id == user_message_id)).scalar()

    def lead_back_to(self, user_message: MessageRecord) -> None:
        """A new reply to `user_message` is claimed: the leaf comes back to the message while it
        is one of the message's replies (an interrupted one) or the message itself, so that the
        new reply becomes the leaf when it is stored; a branch chosen since then stands."""
        c, m = conversations.c, messages.c
        self.conn.execute(update(conversations)
                          .where(c.id == user_message.conversation_id,
                                 or_(c.leaf_id == user_message.id,
                                     c.leaf_id.in_(select(m.id).where(m.reply_to == user_message.id))))
                          .values(leaf_id=user_message.id))

    def point_leaf_at(self, conversation_id: str, user_id: str, message_id: str) -> bool:
        """Make `message_id` the leaf (taking the conversation's row lock); False when the
        conversation is not the user's."""
        c = conversations.c
        return self.conn.execute(update(conversations).where(c.id == conversation_id, c.user_id == user_id)
                                 .values(leaf_id=message_id).returning(c.id)).first() is not None

    def replies_to(self, message_id: str) -> list[MessageRecord]:
        return [MessageRecord(*row) for row in self.conn.execute(_REPLIES_TO, {"p_message": message_id})]

    def seq_of(self, message_id: str, conversation_id: str) -> int | None:
        return self.conn.execute(_SEQ_OF, {"p_message": message_id, "p_conversation": conversation_id}).scalar()

    def page(self, conversation_id: str, before_seq: int | None, limit: int) -> tuple[list[MessageRecord], bool]:
        """The newest `limit` messages older than `before_seq`, oldest first, and whether more remain.

        Fewer when they are large: a page holds at most PAGE_CONTENT_BYTES of content as sent (JSON-
        escaped), and always at least one message, so that one request cannot make a huge answer
        (200 messages of 32,000 control characters is 38 MB) that a client then leaves unread."""
        query = select(*MESSAGE_COLUMNS).where(messages.c.conversation_id == conversation_id)
        if before_seq is not None:
            query = query.where(messages.c.seq < before_seq)
        result = self.conn.execute(query.order_by(messages.c.seq.desc()).limit(limit + 1))
        rows: list[MessageRecord] = []
        size = 0
        has_more = False
        try:
            for row in result:
                message = MessageRecord(*row)
                size += len(orjson.dumps(message.content))
                if len(rows) == limit or (rows and size > PAGE_CONTENT_BYTES):
                    has_more = True
                    break
                rows.append(message)
        finally:
            result.close()
        return list(reversed(rows)), has_more

    # -- server secrets ---------------------------------------------------------------------------
    def get_or_create_secret(self, name: str, make: str) -> str:
        """The stored secret `name`; `make` is stored first if there is none (first writer wins)."""
        found = self.conn.execute(select(server_secrets.c.value).where(server_secrets.c.name == name)).scalar()
        if found is not None:
            return found
        self.conn.execute(insert(server_secrets).values(name=name, value=make, created_at=utcnow()))
        return make
