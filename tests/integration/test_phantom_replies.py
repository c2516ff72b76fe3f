"""No phantom replies: a claim (a reply in flight in replies_in_flight) never outlives its
conversation, and a claim this process holds but no longer runs is stored as interrupted by the
process itself. Against the real PostgreSQL (and SQLite where the rule is the same), in-process."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest
from support.inprocess import aio

from server.chat.commit_points import claim_again
from server.config import Settings
from server.db.engine import make_engine
from server.db.migrate import upgrade_to_head
from server.db.uow import Database
from server.domain import Claim, MessageRecord, new_id, unsaved, utcnow
from server.recovery import leases
from server.recovery.own_claims import sweep_own


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request, databases) -> str:  # type: ignore[no-untyped-def]
    if request.param == "postgres":
        request.getfixturevalue("pg")
    return str(databases.url(request.param))


@pytest.fixture
def pg_url(pg, databases) -> str:  # type: ignore[no-untyped-def]
    return str(databases.url("postgres"))


async def database(url: str) -> Database:
    settings = Settings(database_url=url)
    await upgrade_to_head(settings)
    if settings.is_sqlite:
        from server.db.sqlite_writer import SqliteWriter

        writer = SqliteWriter(settings)
        await writer.start()
        return Database(make_engine(settings), writer)
    return Database(make_engine(settings))


async def a_message(db: Database, user: str = "u1", started: float = 0.0, owner: str = "old") -> MessageRecord:
    """A conversation with one user message, whose reply `owner` claimed `started` seconds ago."""
    message = unsaved(message_id=new_id(), conversation_id=new_id(), role="user", content="hi", status="complete",
                      now=utcnow() - timedelta(seconds=started))
    stored = await db.start_conversation(message, user, Claim(new_id(), owner))
    assert stored is not None
    return stored


async def claims(db: Database) -> list[tuple[str, str]]:
    from sqlalchemy import select

    from server.db.schema import replies_in_flight as f

    rows = await db.read(lambda store: list(store.conn.execute(select(f.c.reply_id, f.c.conversation_id))))
    return [tuple(row) for row in rows]  # type: ignore[misc]


@aio
async def test_a_resend_racing_a_delete_never_leaves_a_claim_without_its_conversation(pg_url):
    """Two databases sessions, as two processes: one takes a new reply over (a resend of an
    interrupted message), the other deletes the conversation, a few milliseconds apart either way."""
    resender, deleter = await database(pg_url), await database(pg_url)
    rnd = random.Random(7)
    outcomes: dict[str, int] = {}
    try:
        await resender.write(lambda s: leases.renew(s, "p1", 60, False))
        for _ in range(60):
            message = await a_message(resender, owner="dead")

            async def take_over(message: MessageRecord = message) -> str:
                await asyncio.sleep(rnd.uniform(0, 0.006))
                return await claim_again(resender, "u1", message, Claim(new_id(), "p1"), lease_grace_s=3)

            async def delete(message: MessageRecord = message) -> bool:
                await asyncio.sleep(rnd.uniform(0, 0.006))
                return await deleter.write(lambda s: s.delete_conversation(message.conversation_id, "u1"))

            taken, deleted = await asyncio.gather(take_over(), delete())
            assert deleted
            outcomes[taken] = outcomes.get(taken, 0) + 1
            assert await claims(resender) == [], f"a claim outlived its conversation ({taken})"
        assert set(outcomes) <= {"claimed", "gone"}
    finally:
        await resender.dispose()
        await deleter.dispose()


@aio
async def test_a_new_reply_to_a_deleted_message_is_gone_not_taken(database_url):
    db = await database(database_url)
    try:
        message = await a_message(db, owner="dead")
        await db.write(lambda s: s.delete_conversation(message.conversation_id, "u1"))
        grace = None if database_url.startswith("sqlite") else 3.0
        assert await claim_again(db, "u1", message, Claim(new_id(), "me"), grace) == "gone"
        assert await claims(db) == []
    finally:
        await db.dispose()


@aio
async def test_claims_this_process_no_longer_runs_are_stored_as_interrupted(database_url):
    db = await database(database_url)
    try:
        stale = await a_message(db, started=60, owner="me")  # its store failed long ago
        running = await a_message(db, started=60, owner="me")  # still generated here
        young = await a_message(db, started=0, owner="me")  # committed a moment ago
        others = await a_message(db, started=60, owner="another")  # another process's business
        gone = await a_message(db, started=60, owner="me")
        await db.write(lambda s: s.delete_conversation(gone.conversation_id, "u1"))
        claimed = {conversation: reply for reply, conversation in await claims(db)}

        swept = await sweep_own(db, "me", lambda reply_id: reply_id == claimed[running.conversation_id])

        assert {o.conversation_id for o in swept} == {stale.conversation_id}
        left = {conversation for _, conversation in await claims(db)}
        assert left == {running.conversation_id, young.conversation_id, others.conversation_id}
        reply = await db.read(lambda s: s.latest_reply("u1", stale.id))
        assert reply is not None and reply.status == "interrupted" and reply.id == claimed[stale.conversation_id]
        assert reply.parent_id == stale.id, "a swept reply hangs under its message in the tree"
        assert await sweep_own(db, "me", lambda _: False, min_age_s=3600) == []
    finally:
        await db.dispose()


@aio
async def test_a_follower_told_not_here_backs_off_instead_of_asking_without_end(pg_url):
    """A claim recorded as process A's that A does not generate (its store failed): a tab that
    resumes it on B must not make A and B ask each other about it in a loop."""
    from support.inprocess import FakeSink

    from server.replies.postgres import records as rec
    from server.replies.postgres.bus import PgReplyBus

    db = await database(pg_url)
    a = PgReplyBus(60, 5, db, "a" * 32)
    b = PgReplyBus(60, 5, db, "b" * 32)
    await a.start(pg_url, 0.005)
    await b.start(pg_url, 0.005)
    asked: list[rec.Interest] = []
    heard = a._received

    def counting(records: list[rec.Record]) -> None:
        asked.extend(r for r in records if isinstance(r, rec.Interest))
        heard(records)

    assert a.channel is not None
    a.channel.on_records = counting
    try:
        message = await a_message(db, owner=a.owner)
        reply = await b.locate("u1", reply_to=message.id)
        assert reply is not None, "listed in flight, as A's"
        follower = b.follow(reply, FakeSink(), 0)
        await follower.pump()
        await asyncio.sleep(1.5)
        assert 1 <= len(asked) <= 2, f"B asked A {len(asked)} times in 1.5 s"
    finally:
        await a.close()
        await b.close()
        await db.dispose()


@aio
async def test_a_resend_waiting_on_another_process_ends_with_a_clear_error_after_duplicate_wait_s(pg_url):
    """Recorded as generated by a live process that never answers (no LISTEN/NOTIFY to follow it):
    the resend gets its ack, then `unavailable` with its client_id once CHAT_DUPLICATE_WAIT_S is
    over, instead of waiting minutes and ending with the ack alone."""
    from support.inprocess import FakeSink, Harness, SteppedModel

    from server.bootstrap import start_services

    settings = Settings(database_url=pg_url, pg_notify=False, duplicate_wait_s=0.5, echo_delay_ms=0)
    await upgrade_to_head(settings)
    svc = await start_services(settings)
    try:
        await svc.db.write(lambda s: leases.renew(s, "elsewhere", 60, False))
        first = unsaved(message_id=new_id(), conversation_id=new_id(), role="user", content="hi",
                        status="complete", client_id="k-wait")
        assert await svc.db.start_conversation(first, "u1", Claim(new_id(), "elsewhere")) is not None
        sink = FakeSink()
        # Within the test's 30 s: before the bound, the wait ran for about 8 minutes.
        await Harness(svc, SteppedModel(1)).send("u1", sink, "hi", client_id="k-wait")
        assert [f["type"] for f in sink.frames] == ["ack", "error"], sink.frames
        assert sink.frames[0]["duplicate"] is True
        assert sink.frames[1]["code"] == "unavailable" and sink.frames[1]["client_id"] == "k-wait"
    finally:
        await svc.close()
