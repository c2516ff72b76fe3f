"""The Alembic migrations on real databases: they build exactly the schema of server/db/schema.py,
re-running them changes nothing, they go down to base and up again, and the constraints the server
relies on (the per-user idempotency key above all) are enforced by the database itself."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.command import downgrade, upgrade
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from support.client import aio

from server.config import Settings
from server.db import search, search_index, tree
from server.db.engine import make_engine
from server.db.migrate import alembic_config, head_revision, upgrade_to_head
from server.db.schema import metadata
from server.db.uow import Database

TABLES = {"conversations", "messages", "process_leases", "regenerations", "replies_in_flight", "server_secrets"}


async def on_db(url: str, fn: Callable[[Connection], Any]) -> Any:
    """fn(sync connection) in one transaction of a fresh unpooled engine; committed if it returns."""
    engine = make_engine(Settings(database_url=url), pooled=False)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


async def sql(url: str, statement: str, **params: Any) -> list[tuple[Any, ...]] | None:
    """One statement in its own transaction; the rows of a SELECT."""

    def run(conn: Connection) -> list[tuple[Any, ...]] | None:
        result = conn.execute(text(statement), params)
        return [tuple(r) for r in result] if result.returns_rows else None

    return await on_db(url, run)


async def upgrade_db(url: str) -> None:
    await upgrade_to_head(Settings(database_url=url))


def schema_diff(conn: Connection) -> list[Any]:
    def not_search(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        return not search_index.is_search_object(name)  # Alembic's own, outside schema.py

    ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True,
                                                 "include_object": not_search})
    return compare_metadata(ctx, metadata)


def revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def tables(conn: Connection) -> set[str]:
    """The tables of schema.py (the search index's own are Alembic's alone: search_index.py)."""
    return {t for t in inspect(conn).get_table_names() if not search_index.is_search_object(t)} - {"alembic_version"}


def alembic(action: Callable[..., None], target: str) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn  # as server.db.migrate does: env.py uses this connection
        action(cfg, target)

    return run


async def add_conversation(url: str, user_id: str = "u-1") -> str:
    conversation_id = str(uuid.uuid4())
    await sql(url, "INSERT INTO conversations (id, user_id, title, created_at, updated_at, last_seq) "
                   "VALUES (:id, :user_id, 't', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0)",
              id=conversation_id, user_id=user_id)
    return conversation_id


async def add_message(url: str, conversation_id: str, seq: int, *, user_id: str = "u-1",
                      client_id: str | None = None, role: str = "user", status: str = "complete") -> str:
    message_id = str(uuid.uuid4())
    await sql(url, "INSERT INTO messages (id, conversation_id, user_id, seq, role, content, status, client_id, "
                   "reply_to, created_at) VALUES (:id, :conversation_id, :user_id, :seq, :role, 'hi', :status, "
                   ":client_id, NULL, CURRENT_TIMESTAMP)",
              id=message_id, conversation_id=conversation_id, user_id=user_id, seq=seq, role=role,
              status=status, client_id=client_id)
    return message_id


@pytest.fixture
def url(db: str, databases) -> str:  # type: ignore[no-untyped-def]
    """A fresh, empty database of the kind under test."""
    return databases.url(db)


@pytest.fixture
def migrated(url: str) -> str:
    asyncio.run(upgrade_db(url))
    return url


# -- the models and the migrations agree ---------------------------------------------------------------
@aio
async def test_migrated_schema_matches_the_models(migrated):
    assert await on_db(migrated, schema_diff) == []
    assert await on_db(migrated, revision) == head_revision() is not None
    assert await on_db(migrated, tables) == TABLES


@pytest.fixture
def migrated_pg(pg, databases) -> str:  # type: ignore[no-untyped-def]
    url = databases.url("postgres")
    asyncio.run(upgrade_db(url))
    return url


@aio
async def test_process_leases_are_unlogged_on_postgresql(migrated_pg):
    migrated = migrated_pg
    # Soft state, renewed every second: no WAL flush for a heartbeat.
    assert await sql(migrated, "SELECT relpersistence::text FROM pg_class WHERE relname = 'process_leases'") == [("u",)]


@aio
async def test_comparison_sees_a_missing_schema(url):
    # Guards the check above: on an empty database the same comparison reports every table.
    diff = await on_db(url, schema_diff)
    assert {d[1].name for d in diff if d[0] == "add_table"} == TABLES


# -- idempotent, reversible ----------------------------------------------------------------------------
@aio
async def test_upgrade_again_is_a_no_op_that_keeps_data(migrated):
    conversation_id = await add_conversation(migrated)
    message_id = await add_message(migrated, conversation_id, 1, client_id="k1")
    await upgrade_db(migrated)
    await upgrade_db(migrated)
    assert await on_db(migrated, revision) == head_revision()
    assert await on_db(migrated, schema_diff) == []
    rows = await sql(migrated, "SELECT id, client_id FROM messages")
    assert rows == [(message_id, "k1")]


@aio
async def test_downgrade_to_base_then_upgrade_to_head(migrated):
    await add_conversation(migrated)
    await on_db(migrated, alembic(downgrade, "base"))
    assert await on_db(migrated, revision) is None
    assert await on_db(migrated, tables) == set()

    await on_db(migrated, alembic(upgrade, "head"))
    assert await on_db(migrated, revision) == head_revision()
    assert await on_db(migrated, tables) == TABLES
    assert await on_db(migrated, schema_diff) == []
    assert await sql(migrated, "SELECT id FROM conversations") == []


def test_concurrent_upgrades_of_a_fresh_database_both_succeed(url):
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(upgrade_db(url))
        except BaseException as e:  # reported below, with the other thread's outcome
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert asyncio.run(on_db(url, revision)) == head_revision()
    assert asyncio.run(on_db(url, schema_diff)) == []


# -- constraints enforced by the database ---------------------------------------------------------------
@aio
async def test_client_id_is_unique_per_user_in_the_database(migrated):
    conversation_id = await add_conversation(migrated)
    await add_message(migrated, conversation_id, 1, client_id="dup")
    with pytest.raises(IntegrityError):
        await add_message(migrated, conversation_id, 2, client_id="dup")
    # The same key in another conversation of the same user is the same idempotency key.
    other = await add_conversation(migrated)
    with pytest.raises(IntegrityError):
        await add_message(migrated, other, 1, client_id="dup")
    rows = await sql(migrated, "SELECT seq FROM messages WHERE client_id = 'dup'")
    assert [r[0] for r in rows] == [1]


@aio
async def test_null_client_ids_and_other_users_keys_do_not_collide(migrated):
    conversation_id = await add_conversation(migrated)
    await add_message(migrated, conversation_id, 1, client_id=None)
    await add_message(migrated, conversation_id, 2, client_id=None, role="assistant")
    await add_message(migrated, conversation_id, 3, client_id="k")
    theirs = await add_conversation(migrated, user_id="u-2")
    await add_message(migrated, theirs, 1, user_id="u-2", client_id="k")
    rows = await sql(migrated, "SELECT user_id, client_id FROM messages ORDER BY user_id, seq")
    assert rows == [("u-1", None), ("u-1", None), ("u-1", "k"), ("u-2", "k")]


@aio
async def test_seq_is_unique_per_conversation(migrated):
    conversation_id = await add_conversation(migrated)
    await add_message(migrated, conversation_id, 1)
    with pytest.raises(IntegrityError):
        await add_message(migrated, conversation_id, 1)
    await add_message(migrated, await add_conversation(migrated), 1)


@pytest.mark.parametrize("column, value", [("role", "system"), ("status", "streaming")])
@aio
async def test_role_and_status_are_checked(migrated, column, value):
    conversation_id = await add_conversation(migrated)
    with pytest.raises(IntegrityError):
        await add_message(migrated, conversation_id, 1, **{column: value})
    await add_message(migrated, conversation_id, 1, role="assistant", status="interrupted")


@aio
async def test_messages_need_their_conversation_and_go_with_it(migrated):
    with pytest.raises(IntegrityError):
        await add_message(migrated, str(uuid.uuid4()), 1)
    conversation_id = await add_conversation(migrated)
    await add_message(migrated, conversation_id, 1)
    await sql(migrated, "DELETE FROM conversations WHERE id = :id", id=conversation_id)
    assert await sql(migrated, "SELECT id FROM messages") == []


@aio
async def test_replies_in_flight_keep_their_rows_through_0005_and_its_downgrade(migrated):
    # 0005 drops the table's foreign keys (SQLite: by copying the table): its rows must survive,
    # and going back drops only what the keys would refuse (rows of deleted conversations).
    await on_db(migrated, alembic(downgrade, "0004"))
    conversation_id = await add_conversation(migrated)
    message_id = await add_message(migrated, conversation_id, 1)
    in_flight = ("INSERT INTO replies_in_flight (user_message_id, reply_id, conversation_id, user_id, owner, "
                 "started_at, content) VALUES (:m, :r, :c, 'u-1', 'o', CURRENT_TIMESTAMP, 'so far')")
    await sql(migrated, in_flight, m=message_id, r="r-1", c=conversation_id)
    await on_db(migrated, alembic(upgrade, "head"))
    assert await on_db(migrated, schema_diff) == []
    assert await sql(migrated, "SELECT user_message_id, reply_id, content FROM replies_in_flight") == [
        (message_id, "r-1", "so far")]
    await sql(migrated, in_flight, m="gone", r="r-2", c="gone too")  # no keys now
    await on_db(migrated, alembic(downgrade, "0004"))
    assert await sql(migrated, "SELECT user_message_id FROM replies_in_flight") == [(message_id,)]
    with pytest.raises(IntegrityError):
        await sql(migrated, in_flight, m="gone", r="r-2", c="gone too")


@aio
async def test_0006_gives_stored_conversations_their_parents_in_stored_order_and_the_newest_as_leaf(migrated):
    """A database written before branches (revision 0005: no parent_id, no leaf), as that release
    wrote it: turns, an interrupted reply and its resend's reply, and a second user."""
    await on_db(migrated, alembic(downgrade, "0005"))
    first = await add_conversation(migrated)
    written = [await add_message(migrated, first, seq, role=role, status=status)
               for seq, role, status in [(1, "user", "complete"), (2, "assistant", "interrupted"),
                                         (3, "assistant", "complete"), (4, "user", "complete"),
                                         (5, "assistant", "complete")]]
    second = await add_conversation(migrated, user_id="u-2")
    lonely = await add_message(migrated, second, 1, user_id="u-2")
    empty = await add_conversation(migrated)

    await on_db(migrated, alembic(upgrade, "head"))

    assert await on_db(migrated, schema_diff) == []
    parents = dict(await sql(migrated, "SELECT id, parent_id FROM messages WHERE conversation_id = :c", c=first))
    assert [parents[m] for m in written] == [None, *written[:-1]]
    assert await sql(migrated, "SELECT parent_id FROM messages WHERE id = :m", m=lonely) == [(None,)]
    leaves = dict(await sql(migrated, "SELECT id, leaf_id FROM conversations"))
    assert leaves == {first: written[-1], second: lonely, empty: None}
    # And the branch the server reads is the stored order, whole.
    settings = Settings(database_url=migrated)
    db = Database(make_engine(settings))
    try:
        page = await db.read(lambda store: tree.branch(store, first, "u-1", None, 50))
        assert [m.id for m in page.messages] == written and page.leaf_id == written[-1]
    finally:
        await db.dispose()
    await on_db(migrated, alembic(downgrade, "0005"))  # and back, keeping every message
    assert len(await sql(migrated, "SELECT id FROM messages")) == 6


@aio
async def test_0007_indexes_the_messages_stored_before_and_keeps_indexing_after_until_it_is_downgraded(migrated):
    """Messages written before search (revision 0006) are found after the upgrade; new ones and
    deleted ones follow; the conversations keep their first-words titles; a downgrade drops the
    index and the new columns and keeps every message."""
    await on_db(migrated, alembic(downgrade, "0006"))
    first = await add_conversation(migrated)
    old = await add_message(migrated, first, 1)  # content 'hi'
    await on_db(migrated, alembic(upgrade, "head"))
    assert await on_db(migrated, schema_diff) == []
    assert await sql(migrated, "SELECT title_source, model, system_prompt FROM conversations") == [
        ("words", None, None)]

    db = Database(make_engine(Settings(database_url=migrated)))
    try:
        async def found(q: str, user: str = "u-1") -> list[str]:
            hits, _ = await db.read(lambda store: search.search(store, user, q, None, 50))
            return [h.message_id for h in hits]

        assert await found("HI") == [old]
        assert await found("hi", user="u-2") == []
        new = await add_message(migrated, first, 2)
        assert set(await found("hi")) == {old, new}
        await sql(migrated, "UPDATE messages SET content = 'changed words' WHERE id = :m", m=new)
        assert await found("hi") == [old] and await found("changed words") == [new]
        await sql(migrated, "DELETE FROM messages WHERE id = :m", m=old)
        assert await found("hi") == []
    finally:
        await db.dispose()
    await on_db(migrated, alembic(downgrade, "0006"))
    assert await sql(migrated, "SELECT id FROM messages") == [(new,)]
    assert not {t for t in await on_db(migrated, lambda conn: inspect(conn).get_table_names())
                if search_index.is_search_object(t)}
    await on_db(migrated, alembic(upgrade, "head"))  # and up again, rebuilt from what is stored
    assert await on_db(migrated, schema_diff) == []
