"""Group commit of the turn writes on PostgreSQL (pg_turn_writes.py), on a real database.

The writes that arrive while a lane's commit is in flight share its next one: one round trip, one
transaction, one WAL flush. These tests check what that must not change: each write gets its own
seq, one user's bad write never fails another's in the same batch, and a batch that breaks
commits nothing of it, each write failing with DatabaseUnavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from support.client import aio

from server.config import Settings
from server.db.engine import make_engine
from server.db.migrate import upgrade_to_head
from server.db.pg_turn_writes import APPEND_CLAIMING, APPLICATION_NAME, PgTurnWrites, asyncpg_dsn
from server.db.schema import conversations, messages
from server.db.store import Store, append_params
from server.db.uow import Database, DatabaseUnavailable
from server.domain import Claim, MessageRecord, new_id, unsaved, utcnow

pytestmark = pytest.mark.usefixtures("pg")


@contextlib.asynccontextmanager
async def open_database(url: str, **settings: Any) -> AsyncIterator[Database]:
    config = Settings(database_url=url, **settings)
    await upgrade_to_head(config)
    database = Database(make_engine(config), None, await PgTurnWrites.open(config))
    try:
        yield database
    finally:
        await database.dispose()


async def _conversations(database: Database, user_id: str, n: int) -> list[str]:
    """n conversations of `user_id`, each with a first message (seq 1), in order of id."""
    def work(store: Store) -> list[str]:
        ids = []
        for _ in range(n):
            conversation_id = store.create_conversation(user_id, "first", utcnow())
            store.add_message(message_id=new_id(), conversation_id=conversation_id, user_id=user_id, seq=1,
                              role="user", content="first", status="complete", client_id=f"first-{conversation_id}",
                              reply_to=None, now=utcnow())
            ids.append(conversation_id)
        return sorted(ids)

    return await database.write(work)


def _message(conversation_id: str, client_id: str | None = None, role: str = "user",
             reply_to: str | None = None, message_id: str | None = None) -> MessageRecord:
    return unsaved(message_id=message_id or new_id(), conversation_id=conversation_id, role=role,
                   content=f"to {conversation_id}", status="complete", client_id=client_id, reply_to=reply_to)


async def _append_all(database: Database, writes: list[tuple[MessageRecord, str, Claim | None]]) -> list[Any]:
    """All the writes at once, as many sockets send them: their results or exceptions, in order."""
    return await asyncio.gather(*(database.append_message(m, user, claim) for m, user, claim in writes),
                                return_exceptions=True)


def _batches() -> tuple[float, float]:
    """(commits, commits that held more than one write) so far, from chat_db_units_per_commit."""
    count = REGISTRY.get_sample_value("chat_db_units_per_commit_count") or 0.0
    single = REGISTRY.get_sample_value("chat_db_units_per_commit_bucket", {"le": "1.0"}) or 0.0
    return count, count - single


def _replayed() -> float:
    return REGISTRY.get_sample_value("chat_db_batches_replayed_total") or 0.0


async def _messages(database: Database) -> list[dict[str, Any]]:
    def work(store: Store) -> list[dict[str, Any]]:
        rows = store.conn.execute(select(messages).order_by(messages.c.conversation_id, messages.c.seq))
        return [dict(r) for r in rows.mappings()]

    return await database.read(work)


async def _last_seqs(database: Database) -> dict[str, int]:
    def work(store: Store) -> dict[str, int]:
        return dict(store.conn.execute(select(conversations.c.id, conversations.c.last_seq)).all())  # type: ignore[arg-type]

    return await database.read(work)


@aio
async def test_concurrent_appends_share_commits_and_each_gets_its_own_seq(databases):
    async with open_database(databases.url("postgres")) as database:
        users = [f"user-{i}" for i in range(30)]
        own = {user: (await _conversations(database, user, 1))[0] for user in users}
        shared = (await _conversations(database, "alice", 1))[0]  # five sockets of one user, at once
        commits_before, batched_before = _batches()
        writes = [(_message(own[user], client_id=f"c-{user}"), user, Claim(new_id(), "o")) for user in users]
        writes += [(_message(shared, client_id=f"s-{i}"), "alice", Claim(new_id(), "o")) for i in range(5)]
        results = await _append_all(database, writes)
        commits, batched = _batches()
        assert batched > batched_before, "no commit held more than one write"
        assert commits - commits_before < len(writes)
        assert [r.seq for r in results[:30]] == [2] * 30
        assert sorted(r.seq for r in results[30:]) == [2, 3, 4, 5, 6]
        stored = {m["id"]: m for m in await _messages(database)}
        for (message, user, _), result in zip(writes, results, strict=True):
            row = stored[message.id]
            assert (row["seq"], row["user_id"], row["client_id"], row["parent_id"]) == \
                (result.seq, user, message.client_id, result.parent_id)
        # The five in one conversation are chained, each under the one before (no accidental siblings).
        chain = sorted(results[30:], key=lambda r: r.seq)
        assert [r.parent_id for r in chain[1:]] == [r.id for r in chain[:-1]]
        assert (await _last_seqs(database))[shared] == 6
        # Their replies: the other lane, batched too, each after its own message.
        replies = [(_message(m.conversation_id, role="assistant", reply_to=m.id), user, None)
                   for (_, user, _), m in zip(writes[:30], results[:30], strict=True)]
        stored_replies = await _append_all(database, replies)
        assert [r.seq for r in stored_replies] == [3] * 30
        assert await database.read(lambda store: store.orphans("someone else")) != []  # the five in `shared`
        assert _batches()[1] > batched


@aio
async def test_a_client_id_race_in_a_batch_fails_only_that_write(databases):
    # Two resends of one client_id, racing: another process has inserted it and not committed yet
    # when this batch inserts it too. The batch waits on that row, then fails on the unique index,
    # whole; each write is sent again alone, and only the racing one comes back without a row
    # (the caller then finds the original, as on the engine).
    url = databases.url("postgres")
    async with open_database(url) as database:
        a, b, c, elsewhere = await _conversations(database, "alice", 4)
        other = await asyncpg.connect(asyncpg_dsn(url))
        try:
            transaction = other.transaction()
            await transaction.start()
            rival = _message(elsewhere, client_id="dup")
            params = append_params(rival, "alice", Claim(new_id(), "other process"))
            assert await other.fetchrow(APPEND_CLAIMING.sql, *APPEND_CLAIMING.args(params)) is not None
            replayed = _replayed()
            writes = [(_message(a, client_id="a-1"), "alice", Claim(new_id(), "o")),
                      (_message(b, client_id="dup"), "alice", Claim(new_id(), "o")),
                      (_message(c, client_id="c-1"), "alice", Claim(new_id(), "o"))]
            pending = asyncio.ensure_future(_append_all(database, writes))
            await _until_waiting_on_a_lock(other)
            await transaction.commit()
            results = await asyncio.wait_for(pending, 10)
        finally:
            await other.close()
        assert _replayed() == replayed + 1
        assert results[1] is None or isinstance(results[1], IntegrityError)
        assert (results[0].seq, results[2].seq) == (2, 2)
        rows = await _messages(database)
        assert [m["id"] for m in rows if m["client_id"] == "dup"] == [rival.id]
        assert {m["client_id"] for m in rows} >= {"a-1", "c-1"}


@aio
async def test_a_reply_id_taken_in_a_batch_is_an_integrity_error_for_that_write_only(databases):
    # The producer's case (a reply stored meanwhile by a sweep): its write fails whole with
    # IntegrityError, and the replies batched with it are stored.
    async with open_database(databases.url("postgres")) as database:
        ids = await _conversations(database, "alice", 3)
        swept = _message(ids[1], role="assistant")
        assert await database.append_message(swept, "alice") is not None
        replayed = _replayed()
        results = await _append_all(database, [
            (_message(ids[0], role="assistant"), "alice", None),
            (_message(ids[1], role="assistant", message_id=swept.id), "alice", None),
            (_message(ids[2], role="assistant"), "alice", None)])
        assert _replayed() == replayed + 1
        assert isinstance(results[1], IntegrityError)
        assert (results[0].seq, results[2].seq) == (2, 2)
        assert await _last_seqs(database) == {ids[0]: 2, ids[1]: 2, ids[2]: 2}


@aio
async def test_a_deleted_conversation_in_a_batch_returns_none_for_it_only(databases):
    async with open_database(databases.url("postgres")) as database:
        ids = await _conversations(database, "alice", 3)
        await database.write(lambda store: store.delete_conversation(ids[1], "alice"))
        _, batched_before = _batches()
        replayed = _replayed()
        results = await _append_all(database, [
            (_message(i, client_id=f"k-{n}"), "alice", Claim(new_id(), "o")) for n, i in enumerate(ids)])
        assert results[1] is None
        assert (results[0].seq, results[2].seq) == (2, 2)
        assert _batches()[1] == batched_before + 1 and _replayed() == replayed  # one batch, no error
        assert {m["client_id"] for m in await _messages(database)} == {
            f"first-{ids[0]}", f"first-{ids[2]}", "k-0", "k-2"}


@aio
async def test_a_connection_dropped_mid_batch_fails_every_write_and_commits_none(databases):
    # The batch runs its writes in order of conversation id: the first two are written, the
    # third waits on a lock another session holds; then the batch's connection is killed.
    url = databases.url("postgres")
    async with open_database(url) as database:
        ids = await _conversations(database, "alice", 3)
        before = await _messages(database)
        other = await asyncpg.connect(asyncpg_dsn(url))
        try:
            async with other.transaction():
                await other.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", ids[2])
                pending = asyncio.ensure_future(_append_all(database, [
                    (_message(i, client_id=f"k-{n}"), "alice", Claim(new_id(), "o")) for n, i in enumerate(ids)]))
                pid = await _until_waiting_on_a_lock(other)
                assert await other.fetchval("SELECT pg_terminate_backend($1)", pid)
                results = await asyncio.wait_for(pending, 10)
        finally:
            await other.close()
        assert all(isinstance(r, DatabaseUnavailable) for r in results), results
        assert await _messages(database) == before
        assert await _last_seqs(database) == dict.fromkeys(ids, 1)
        assert await database.read(lambda store: store.orphans("someone else")) == []
        # The next writes find a fresh connection.
        again = await _append_all(database, [(_message(i), "alice", Claim(new_id(), "o")) for i in ids])
        assert [r.seq for r in again] == [2, 2, 2]


@aio
async def test_the_statement_timeout_bounds_the_whole_batch(databases):
    url = databases.url("postgres")
    async with open_database(url, db_statement_timeout_s=0.5) as database:
        ids = await _conversations(database, "alice", 3)
        before = await _messages(database)
        other = await asyncpg.connect(asyncpg_dsn(url))
        try:
            async with other.transaction():
                await other.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", ids[2])
                started = asyncio.get_running_loop().time()
                results = await _append_all(database, [
                    (_message(i), "alice", Claim(new_id(), "o")) for i in ids])
                waited = asyncio.get_running_loop().time() - started
                # The cancel request asyncpg sent on the timeout lands while the lock is still held.
                for _ in range(100):
                    if not await other.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                            " AND wait_event_type = 'Lock'", APPLICATION_NAME):
                        break
                    await asyncio.sleep(0.02)
        finally:
            await other.close()
        assert all(isinstance(r, DatabaseUnavailable) for r in results), results
        assert 0.4 < waited < 2.0
        assert await _messages(database) == before  # the batch was rolled back whole
        again = await _append_all(database, [(_message(i), "alice", Claim(new_id(), "o")) for i in ids])
        assert [r.seq for r in again] == [2, 2, 2]


async def _until_waiting_on_a_lock(conn: asyncpg.Connection) -> int:
    """The pid of the turn writes' backend once it waits on a lock."""
    for _ in range(200):
        pid = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
            APPLICATION_NAME)
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.02)
    raise AssertionError("the batch never waited on the lock")

