"""Database.append_message on the real databases: the turn path's one-statement write.

On PostgreSQL it is a single statement sent without a transaction around it, so any mistake in it
(a wrong row updated, a check that lets a duplicate through) would be committed at once. These
tests read the tables back after each call. Each runs twice: through the turn path's asyncpg lane
(pg_turn_writes.py; on SQLite, the writer thread) and through the engine (`Store.append_message`
in a unit of work, as the sweep runs it): the same statement by two routes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from support.client import aio

from server.config import Settings
from server.db.engine import make_engine
from server.db.migrate import upgrade_to_head
from server.db.pg_turn_writes import APPLICATION_NAME, PgTurnWrites, asyncpg_dsn
from server.db.schema import conversations, messages
from server.db.sqlite_writer import SqliteWriter
from server.db.store import Store
from server.db.uow import Database, DatabaseUnavailable
from server.domain import Claim, MessageRecord, ReplyMeta, new_id, unsaved, utcnow


@pytest.fixture
def database_url(db: str, databases) -> str:  # type: ignore[no-untyped-def]
    return databases.url(db)


@pytest.fixture(params=["turn path", "engine"])
def route(request) -> str:  # type: ignore[no-untyped-def]
    return str(request.param)


@contextlib.asynccontextmanager
async def open_database(url: str) -> AsyncIterator[Database]:
    """The server's own Database (the SQLite writer, PostgreSQL's asyncpg lane) on a migrated
    fresh database."""
    settings = Settings(database_url=url)
    await upgrade_to_head(settings)
    writer = SqliteWriter(settings) if settings.is_sqlite else None
    if writer is not None:
        await writer.start()
    turn_writes = await PgTurnWrites.open(settings) if not settings.is_sqlite else None
    database = Database(make_engine(settings), writer, turn_writes)
    try:
        yield database
    finally:
        await database.dispose()


async def _conversation(database: Database, user_id: str, client_id: str = "c-1") -> str:
    def work(store: Store) -> str:
        conversation_id = store.create_conversation(user_id, "first", utcnow())
        store.add_message(message_id=new_id(), conversation_id=conversation_id, user_id=user_id, seq=1,
                          role="user", content="first", status="complete", client_id=client_id, reply_to=None,
                          now=utcnow())
        return conversation_id

    return await database.write(work)


async def _append(database: Database, route: str, conversation_id: str, user_id: str, client_id: str | None = None,
                  role: str = "user", stats: ReplyMeta | None = None):  # type: ignore[no-untyped-def]
    message_id = new_id()
    message = unsaved(message_id=message_id, conversation_id=conversation_id, role=role,
                      content=f"text of {message_id}", status="complete", client_id=client_id, stats=stats)
    claim = Claim(new_id(), "owner") if role == "user" else None  # as a turn sends them
    if route == "engine":
        return message_id, await database.write(lambda store: store.append_message(message, user_id, claim))
    return message_id, await database.append_message(message, user_id, claim)


def aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # SQLite hands back naive UTC


async def _rows(database: Database):  # type: ignore[no-untyped-def]
    def work(store: Store):  # type: ignore[no-untyped-def]
        convs = store.conn.execute(select(conversations).order_by(conversations.c.id)).mappings().all()
        msgs = store.conn.execute(
            select(messages).order_by(messages.c.conversation_id, messages.c.seq)).mappings().all()
        return [dict(r) for r in convs], [dict(r) for r in msgs]

    return await database.read(work)


@aio
async def test_append_takes_the_next_seq_and_leaves_the_conversation_row_whole(database_url, route):
    async with open_database(database_url) as database:
        conversation_id = await _conversation(database, "alice")
        convs_before, _ = await _rows(database)
        _, first = await _append(database, route, conversation_id, "alice", client_id="c-2")
        reply_id, reply = await _append(database, route, conversation_id, "alice", role="assistant",
                                        stats=ReplyMeta(model="m", prompt_tokens=3, completion_tokens=4,
                                                        first_token_ms=5))
        assert (first.seq, reply.seq) == (2, 3)
        convs, msgs = await _rows(database)
        assert len(convs) == 1
        before, after = convs_before[0], convs[0]
        assert {k: after[k] for k in ("id", "user_id", "title", "created_at")} == \
            {k: before[k] for k in ("id", "user_id", "title", "created_at")}
        assert after["last_seq"] == 3
        # updated_at is when the person last wrote: the user message moved it, the reply did not.
        assert aware(after["updated_at"]) == first.created_at > aware(before["updated_at"])
        assert [(m["seq"], m["role"], m["client_id"], m["user_id"]) for m in msgs] == [
            (1, "user", "c-1", "alice"), (2, "user", "c-2", "alice"), (3, "assistant", None, "alice")]
        stored = msgs[2]
        assert stored["id"] == reply_id and stored["content"] == f"text of {reply_id}"
        assert (stored["model"], stored["prompt_tokens"], stored["completion_tokens"], stored["first_token_ms"]) == \
            ("m", 3, 4, 5)
        assert reply.id == reply_id and reply.conversation_id == conversation_id


@aio
async def test_append_writes_nothing_for_a_foreign_or_unknown_conversation_or_a_used_client_id(database_url, route):
    async with open_database(database_url) as database:
        conversation_id = await _conversation(database, "alice")
        before = await _rows(database)
        assert (await _append(database, route, conversation_id, "mallory", client_id="m-1"))[1] is None
        assert (await _append(database, route, new_id(), "alice", client_id="c-9"))[1] is None
        assert (await _append(database, route, conversation_id, "alice", client_id="c-1"))[1] is None  # used by seq 1
        assert await _rows(database) == before


@aio
async def test_a_client_id_is_per_user(database_url, route):
    async with open_database(database_url) as database:
        alice = await _conversation(database, "alice")
        bob = await _conversation(database, "bob")
        _, message = await _append(database, route, bob, "bob", client_id="c-1b")
        assert message is not None and message.seq == 2
        _, again = await _append(database, route, alice, "alice", client_id="c-1b")
        assert again is not None and again.seq == 2


@aio
async def test_a_reply_id_taken_is_an_integrity_error_and_writes_nothing(database_url, route):
    # The producer relies on it: a reply stored meanwhile by another process's sweep keeps its id,
    # and the second store must fail whole (no seq taken) for the producer to read that row back.
    async with open_database(database_url) as database:
        conversation_id = await _conversation(database, "alice")
        reply = unsaved(message_id=new_id(), conversation_id=conversation_id, role="assistant",
                        content="swept", status="interrupted")
        assert await database.append_message(reply, "alice") is not None
        before = await _rows(database)
        again = dataclasses.replace(reply, content="late", status="complete")
        with pytest.raises(IntegrityError):
            if route == "engine":
                await database.write(lambda store: store.append_message(again, "alice"))
            else:
                await database.append_message(again, "alice")
        assert await _rows(database) == before


@aio
async def test_the_turn_path_survives_its_connections_being_killed(pg, databases):
    # A PostgreSQL restart or a pooler dropping connections: the next turn writes on a fresh one.
    async with open_database(databases.url("postgres")) as database:
        conversation_id = await _conversation(database, "alice")
        assert (await _append(database, "turn path", conversation_id, "alice"))[1] is not None
        conn = await asyncpg.connect(asyncpg_dsn(databases.url("postgres")))
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                APPLICATION_NAME)
        finally:
            await conn.close()
        assert killed >= 1
        results = []
        for _ in range(3):
            try:
                results.append((await _append(database, "turn path", conversation_id, "alice"))[1])
            except DatabaseUnavailable:
                results.append(None)  # at most the write that found its connection dead
        assert all(r is not None for r in results[1:]), results
        _, msgs = await _rows(database)
        assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))


@aio
async def test_a_conversation_starts_in_one_statement_with_its_first_message_and_claim(pg, databases):
    async with open_database(databases.url("postgres")) as database:
        claim = Claim(new_id(), "owner-1")
        first = unsaved(message_id=new_id(), conversation_id=new_id(), role="user",
                        content="  Hello   there,\nfriend  ", status="complete", client_id="k-1")
        stored = await database.start_conversation(first, "alice", claim)
        assert stored is not None and stored.seq == 1 and stored.id == first.id
        convs, msgs = await _rows(database)
        assert [(c["id"], c["user_id"], c["title"], c["last_seq"]) for c in convs] == [
            (first.conversation_id, "alice", "Hello there, friend", 1)]
        assert convs[0]["created_at"] == convs[0]["updated_at"] == first.created_at
        assert [(m["id"], m["seq"], m["user_id"], m["client_id"]) for m in msgs] == [(first.id, 1, "alice", "k-1")]
        in_flight = await database.read(lambda store: store.orphans("someone else"))
        assert [(o.user_message_id, o.reply_id, o.conversation_id, o.user_id) for o in in_flight] == [
            (first.id, claim.reply_id, first.conversation_id, "alice")]
        # The conversation goes on with the append statement.
        _, second = await _append(database, "turn path", first.conversation_id, "alice", client_id="k-2")
        assert second.seq == 2


@aio
async def test_a_used_client_id_starts_nothing_and_another_users_does(pg, databases):
    async with open_database(databases.url("postgres")) as database:
        await _conversation(database, "alice")  # its first message has client_id c-1
        before = await _rows(database)

        def first_message(client_id: str) -> MessageRecord:
            return unsaved(message_id=new_id(), conversation_id=new_id(), role="user", content="again",
                           status="complete", client_id=client_id)

        assert await database.start_conversation(first_message("c-1"), "alice", Claim(new_id(), "o")) is None
        assert await _rows(database) == before
        assert await database.start_conversation(first_message("c-1"), "bob", Claim(new_id(), "o")) is not None
        assert await database.start_conversation(first_message("c-9"), "alice", Claim(new_id(), "o")) is not None


async def _in_flight(database: Database) -> list[tuple[str, str]]:
    return sorted((o.user_message_id, o.conversation_id) for o in
                  await database.read(lambda store: store.orphans("someone else")))


@aio
async def test_deleting_a_conversation_removes_its_replies_in_flight_and_only_those(database_url, route):
    # replies_in_flight has no foreign keys (migration 0005): the delete itself must remove them,
    # or a crash sweep would later try to answer messages that no longer exist.
    async with open_database(database_url) as database:
        doomed = await _conversation(database, "alice")
        kept = await _conversation(database, "alice", client_id="c-0")
        doomed_message, _ = await _append(database, route, doomed, "alice", client_id="d-1")
        kept_message, _ = await _append(database, route, kept, "alice", client_id="k-1")
        assert await _in_flight(database) == sorted([(doomed_message, doomed), (kept_message, kept)])
        assert await database.write(lambda store: store.delete_conversation(doomed, "alice"))
        assert await _in_flight(database) == [(kept_message, kept)]


@aio
async def test_a_reply_to_a_deleted_conversation_stores_nothing_and_releases_its_claim(database_url, route):
    # What the sweep does with an orphan whose conversation is gone, and a producer whose
    # conversation was deleted while it streamed: no row, and no claim left to sweep again.
    async with open_database(database_url) as database:
        conversation_id = await _conversation(database, "alice")
        message = unsaved(message_id=new_id(), conversation_id=conversation_id, role="user", content="hi",
                          status="complete", client_id="c-2")
        claim = Claim(new_id(), "dead owner")
        assert await database.append_message(message, "alice", claim) is not None
        # A claim the delete did not see (written by a path that raced it), left in flight.
        await database.write(lambda store: store.delete_conversation(conversation_id, "alice"))
        await database.write(lambda store: store.claim_reply(message, "alice", claim))
        assert await _in_flight(database) == [(message.id, conversation_id)]
        reply = unsaved(message_id=claim.reply_id, conversation_id=conversation_id, role="assistant",
                        content="late", status="interrupted", reply_to=message.id)
        if route == "engine":
            stored = await database.write(lambda store: store.append_message(reply, "alice"))
        else:
            stored = await database.append_message(reply, "alice")
        assert stored is None
        assert await _in_flight(database) == []
        assert await _rows(database) == ([], [])
