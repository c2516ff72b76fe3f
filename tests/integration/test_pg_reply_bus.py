"""The reply bus across processes (PgReplyBus) on a real PostgreSQL, in one event loop: two buses,
as two processes would hold them, on one migrated database, each with its own LISTEN connection.
The test plays the producer on bus A (claim, publish, finish) and the sockets on bus B (fake
sinks), so every record crosses a real NOTIFY and nothing else is faked."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY
from support.inprocess import FakeSink, aio

from server.config import Settings
from server.db.engine import make_engine
from server.db.migrate import upgrade_to_head
from server.db.uow import Database
from server.domain import Claim, MessageRecord, ReplyMeta, new_id, unsaved, utcnow
from server.replies.postgres import records as rec
from server.replies.postgres.bus import PgReplyBus
from server.replies.postgres.listen import BROADCAST
from server.replies.reply import LiveReply, Outcome

pytestmark = pytest.mark.postgres

TICK_S = 0.01
WITHIN_S = 2.0  # what any record may take to cross; a tick is 10 ms


@pytest.fixture(scope="module")
def pg_url(databases) -> str:  # type: ignore[no-untyped-def]
    """One migrated database for the module: each test uses its own users and conversations."""
    url = databases.url("postgres")
    asyncio.run(upgrade_to_head(Settings(database_url=url)))
    return url


@dataclass
class Buses:
    db: Database
    a: PgReplyBus  # generates the replies
    b: PgReplyBus  # follows, stops, watches them
    heard: dict[str, list[rec.Record]] = field(default_factory=lambda: {"a": [], "b": []})
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def until_heard(self, bus: str, test: Callable[[rec.Record], bool]) -> None:
        """Until bus `bus` has received (and handled) a record passing `test`."""
        async with asyncio.timeout(WITHIN_S):
            while not any(test(r) for r in self.heard[bus]):
                self.arrived.clear()
                await self.arrived.wait()

    async def in_flight_on_a(self, user: str) -> tuple[LiveReply, MessageRecord]:
        """A user message stored, its reply claimed by A (the row other processes find) and in flight on A."""
        owner = self.a.owner

        def work(store) -> tuple[MessageRecord, str]:  # type: ignore[no-untyped-def]
            now = utcnow()
            conversation = store.create_conversation(user, "hi", now)
            message = store.add_message(message_id=new_id(), conversation_id=conversation, user_id=user, seq=1,
                                        role="user", content="hi", status="complete", client_id=None,
                                        reply_to=None, now=now)
            reply_id = new_id()
            store.claim_reply(message, user, Claim(reply_id, owner))
            return message, reply_id

        message, reply_id = await self.db.write(work)
        reply = self.a.claim(user, message, reply_id)
        assert reply is not None
        return reply, message


async def finish(buses: Buses, reply: LiveReply, status: str, error: str | None = None) -> None:
    """As A's producer ends a reply: stored (which releases its row in flight), then finished on the bus."""
    saved = await buses.db.append_message(unsaved(message_id=reply.id, conversation_id=reply.conversation_id,
                                                  role="assistant", content=reply.content, status=status,
                                                  reply_to=reply.reply_to, stats=ReplyMeta(error=error)),
                                          reply.user_id)
    assert saved is not None
    await buses.a.finish(reply, Outcome(saved))


def stop_signal(reply: LiveReply) -> asyncio.Event:
    """Set when the reply is asked to stop (as the producer's on_stop would close the model's stream)."""
    stopped = asyncio.Event()
    reply.on_stop = stopped.set
    return stopped


def user() -> str:
    return "u-" + new_id()


@contextlib.asynccontextmanager
async def two_buses(url: str) -> AsyncIterator[Buses]:
    db = Database(make_engine(Settings(database_url=url)))
    a = PgReplyBus(60, 10, db, uuid.uuid4().hex)
    b = PgReplyBus(60, 10, db, uuid.uuid4().hex)
    buses = Buses(db, a, b)
    try:
        for name, bus in (("a", a), ("b", b)):
            await bus.start(url, TICK_S)
            assert bus.channel is not None
            handle = bus.channel.on_records

            def spy(records: list[rec.Record], handle=handle, name=name) -> None:  # type: ignore[no-untyped-def]
                handle(records)
                buses.heard[name].extend(records)
                buses.arrived.set()

            bus.channel.on_records = spy
        yield buses
    finally:
        await a.close()
        await b.close()
        await db.dispose()


async def follow_on_b(buses: Buses, reply: LiveReply, user_id: str) -> FakeSink:
    mirror = await buses.b.locate(user_id, reply_id=reply.id)
    assert mirror is not None and mirror is not reply and mirror.id == reply.id, "B finds A's reply as a mirror"
    sink = FakeSink()
    await buses.b.follow(mirror, sink, 0).pump()
    return sink


def deltas(sink: FakeSink) -> list[tuple[int, str]]:
    return [(f["seq"], f["content"]) for f in sink.of("delta")]


@aio
async def test_a_reply_generated_on_one_bus_is_followed_from_the_other_in_order_to_its_end(pg_url):
    """locate() on B finds A's reply through its row in flight; B then hears the pieces published
    before it followed, the live ones, and the end."""
    async with two_buses(pg_url) as buses:
        u = user()
        reply, _ = await buses.in_flight_on_a(u)
        await buses.a.publish(reply, "one ")
        await buses.a.publish(reply, "two ")
        sink = await follow_on_b(buses, reply, u)
        await sink.until(lambda s: len(s.of("delta")) == 2, WITHIN_S)
        for piece in ("three ", "four ", "five "):
            await buses.a.publish(reply, piece)
            await asyncio.sleep(TICK_S / 3)  # some within one tick, coalesced
        await finish(buses, reply, "complete")
        async with asyncio.timeout(WITHIN_S):
            done = await sink.until_done(reply.id)
        assert [f["type"] for f in sink.frames][0] == "start"
        assert deltas(sink) == [(1, "one "), (2, "two "), (3, "three "), (4, "four "), (5, "five ")]
        assert done["type"] == "done" and done["status"] == "complete"
        assert done["content"] == "one two three four five "


@aio
async def test_a_stop_from_the_other_bus_by_the_replys_user_stops_it(pg_url):
    async with two_buses(pg_url) as buses:
        u = user()
        reply, _ = await buses.in_flight_on_a(u)
        stopped = stop_signal(reply)
        assert buses.b.stop(u, reply.id, "cancelled") is False, "not B's own reply: B broadcasts the stop"
        await asyncio.wait_for(stopped.wait(), WITHIN_S)
        assert reply.stop_reason == "cancelled"


@aio
async def test_a_stop_from_the_other_bus_by_another_user_does_not_stop_the_reply(pg_url):
    """Cancel by id names a reply id only: another user who knows (or guesses) it stops nothing."""
    async with two_buses(pg_url) as buses:
        u = user()
        reply, _ = await buses.in_flight_on_a(u)
        stopped = stop_signal(reply)
        buses.b.stop(user(), reply.id, "cancelled")
        await buses.until_heard("a", lambda r: isinstance(r, rec.Stop) and r.reply_id == reply.id)
        assert not stopped.is_set() and reply.stop_reason is None
        await buses.a.publish(reply, "still here")
        await finish(buses, reply, "complete")
        assert reply.outcome is not None and reply.outcome.stored is not None
        assert reply.outcome.stored.status == "complete"


@aio
async def test_stop_conversation_on_the_other_bus_stops_the_replies_of_that_conversation_only(pg_url):
    """A DELETE on B stops A's reply in the deleted conversation, and leaves A's others alone."""
    async with two_buses(pg_url) as buses:
        u = user()
        doomed, _ = await buses.in_flight_on_a(u)
        spared, _ = await buses.in_flight_on_a(u)
        doomed_stopped, spared_stopped = stop_signal(doomed), stop_signal(spared)
        assert buses.b.stop_conversation(doomed.conversation_id, "deleted") == 0, "none of B's own"
        await asyncio.wait_for(doomed_stopped.wait(), WITHIN_S)
        assert doomed.stop_reason == "deleted"
        assert not spared_stopped.is_set() and spared.stop_reason is None


@aio
async def test_an_announce_from_one_bus_makes_a_sync_watcher_on_the_other_follow_the_reply(pg_url):
    """A message committed on A: its user's ?sync=1 socket on B hears message_added, then the reply."""
    async with two_buses(pg_url) as buses:
        u = user()
        watcher = FakeSink()
        buses.b.watch(u, watcher)
        reply, message = await buses.in_flight_on_a(u)
        await buses.a.announce(message, reply, FakeSink())
        await buses.until_heard("a", lambda r: isinstance(r, rec.Interest) and r.reply_id == reply.id)
        await buses.a.publish(reply, "hello ")
        await buses.a.publish(reply, "there")
        await finish(buses, reply, "complete")
        async with asyncio.timeout(WITHIN_S):
            done = await watcher.until_done(reply.id)
        assert [f["type"] for f in watcher.frames] == ["message_added", "start", "delta", "delta", "done"]
        added = watcher.frames[0]
        assert added["message"]["id"] == message.id and added["conversation_id"] == message.conversation_id
        assert deltas(watcher) == [(1, "hello "), (2, "there")]
        assert done["content"] == "hello there" and reply.id in watcher.followed


def skipped_total() -> float:
    return REGISTRY.get_sample_value("chat_notify_records_skipped_total") or 0.0


@aio
async def test_records_of_an_unknown_version_or_kind_are_skipped_and_counted_and_the_rest_is_handled(pg_url):
    """During a rolling upgrade a newer release shares the channel: what this release does not know
    is skipped, counted, and the records around it (same payload, later payloads) still act."""
    async with two_buses(pg_url) as buses:
        u = user()
        first, _ = await buses.in_flight_on_a(u)
        second, _ = await buses.in_flight_on_a(u)
        first_stopped, second_stopped = stop_signal(first), stop_signal(second)
        before = skipped_total()
        assert buses.b.channel is not None
        newer = b'["s",99,"' + u.encode() + b'","' + first.id.encode() + b'","cancelled","a field more"]'
        unknown_kind = b'["zz",1,"whatever"]'
        buses.b.channel.send_encoded(BROADCAST, [newer, unknown_kind,
                                                 rec.encode(rec.Stop(u, first.id, "cancelled"))])
        await asyncio.wait_for(first_stopped.wait(), WITHIN_S)
        assert skipped_total() == before + 2
        buses.b.stop(u, second.id, "cancelled")  # a later payload
        await asyncio.wait_for(second_stopped.wait(), WITHIN_S)
        assert skipped_total() == before + 2


@aio
async def test_a_finished_reply_with_a_20000_character_error_ends_its_remote_follower_and_sending_goes_on(pg_url):
    """A reply's error text may be long (an upstream's error body): its FINISHED record still fits a
    payload (the text is cut), so the follower on B gets its end, and A's channel keeps sending."""
    async with two_buses(pg_url) as buses:
        u = user()
        reply, _ = await buses.in_flight_on_a(u)
        await buses.a.publish(reply, "partial")
        sink = await follow_on_b(buses, reply, u)
        await sink.until(lambda s: len(s.of("delta")) == 1, WITHIN_S)
        await finish(buses, reply, "error", error="E" * 20_000)
        async with asyncio.timeout(WITHIN_S):
            done = await sink.until_done(reply.id)
        assert done["type"] == "done" and done["status"] == "error" and done["content"] == "partial"
        assert done["error"].startswith("E") and len(done["error"]) <= rec.MAX_TEXT

        later, _ = await buses.in_flight_on_a(u)
        later_sink = await follow_on_b(buses, later, u)
        await buses.until_heard("a", lambda r: isinstance(r, rec.Interest) and r.reply_id == later.id)
        await buses.a.publish(later, "after")
        await finish(buses, later, "complete")
        async with asyncio.timeout(WITHIN_S):
            assert (await later_sink.until_done(later.id))["content"] == "after"
