"""Process leases on a real PostgreSQL (server/recovery/leases.py): when a process counts as dead, and
what the sweep then does. No server process: the statements, on a fresh database."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from support.client import aio

from server.config import Settings
from server.db.engine import make_engine
from server.db.migrate import upgrade_to_head
from server.db.uow import Database
from server.domain import Claim, utcnow
from server.recovery import leases
from server.recovery.sweep import LeaseTimes, sweep_dead

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url(databases) -> str:
    return databases.url("postgres")


async def database(url: str) -> Database:
    settings = Settings(database_url=url)
    await upgrade_to_head(settings)
    return Database(make_engine(settings))


async def a_reply_in_flight(db: Database, owner: str) -> str:
    def work(store) -> str:  # type: ignore[no-untyped-def]
        now = utcnow()
        conversation = store.create_conversation("u1", "hi", now)
        message = store.add_message(message_id=f"m-{owner}", conversation_id=conversation, user_id="u1", seq=1,
                                    role="user", content="hi", status="complete", client_id=None, reply_to=None,
                                    now=now)
        store.claim_reply(message, "u1", Claim(f"r-{owner}", owner))
        return message.id

    return await db.write(work)


@aio
async def test_a_lease_that_runs_out_is_dead_and_its_replies_are_swept(pg_url):
    db = await database(pg_url)
    try:
        times = LeaseTimes(lease_s=0.5, heartbeat_s=0.1, grace_s=0.2, named_session=False)
        await db.write(lambda s: leases.renew(s, "alive", 60, False))
        await db.write(lambda s: leases.renew(s, "hung", times.lease_s, False))
        await a_reply_in_flight(db, "hung")
        await a_reply_in_flight(db, "alive")
        assert await sweep_dead(db, "me", times) == [], "a lease within its time is alive"
        await asyncio.sleep(0.7)
        assert await db.read(lambda s: leases.is_live(s, "alive", times.grace_s))
        assert not await db.read(lambda s: leases.is_live(s, "hung", times.grace_s))
        swept = await sweep_dead(db, "me", times)
        assert [o.reply_id for o in swept] == ["r-hung"]
        stored = await db.read(lambda s: s.message_of("u1", "r-hung"))
        assert stored is not None and stored.status == "interrupted"
        assert await sweep_dead(db, "me", times) == [], "swept once"
        owners = await db.read(lambda s: [r[0] for r in s.conn.exec_driver_sql("SELECT owner FROM process_leases")])
        assert owners == ["alive"], "a dead process's lease goes with its replies"
    finally:
        await db.dispose()


@aio
async def test_a_named_session_that_left_means_dead_after_the_grace_not_before(pg_url):
    db = await database(pg_url)
    named = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"),
                                  server_settings={"application_name": leases.session_name("p1")})
    try:
        times = LeaseTimes(lease_s=60, heartbeat_s=0.1, grace_s=0.5, named_session=True)
        await db.write(lambda s: leases.renew(s, "p1", times.lease_s, True))
        await a_reply_in_flight(db, "p1")
        await asyncio.sleep(0.7)  # heartbeat older than the grace, but its session is there
        assert await db.read(lambda s: leases.is_live(s, "p1", times.grace_s))
        await named.close()  # as kill -9 would
        await db.write(lambda s: leases.renew(s, "p1", times.lease_s, True))  # a heartbeat just before
        assert await db.read(lambda s: leases.is_live(s, "p1", times.grace_s)), "within the grace: a reconnect"
        assert await db.read(lambda s: leases.suspects(s, "me", times.grace_s)) == 1
        await asyncio.sleep(times.grace_s + 0.1)
        assert not await db.read(lambda s: leases.is_live(s, "p1", times.grace_s)), "session gone, grace over"
        assert [o.reply_id for o in await sweep_dead(db, "me", times)] == ["r-p1"]
    finally:
        await named.close()
        await db.dispose()


@aio
async def test_a_new_reply_takes_over_only_from_this_process_or_a_dead_one(pg_url):
    db = await database(pg_url)
    try:
        await db.write(lambda s: leases.renew(s, "other", 60, False))
        await db.write(lambda s: leases.renew(s, "me", 60, False))
        message_id = await a_reply_in_flight(db, "other")

        def take(owner: str, reply_id: str):  # type: ignore[no-untyped-def]
            return lambda s: leases.take_over(s, owner, 3, message_id=message_id, reply_id=reply_id,
                                              conversation_id=s.message_of("u1", message_id).conversation_id,
                                              user_id="u1")

        assert await db.write(take("me", "r-new")) == "taken", "a live process generates it"
        await db.write(lambda s: leases.release(s, "other"))
        assert await db.write(take("me", "r-new")) == "claimed", "its owner is gone"
        assert await db.write(take("me", "r-newer")) == "claimed", "ours, no longer in flight here"
        assert await db.write(take("third", "r-3")) == "taken", "ours is live"
        assert (await db.read(lambda s: leases.record(s, "u1", None, message_id)))[0] == "r-newer"
    finally:
        await db.dispose()

