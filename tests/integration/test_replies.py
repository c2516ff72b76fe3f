"""A reply as a stream with positions: followed, detached, resumed, cancelled by id, seen by other
tabs, swept after a crash. In-process (see conftest.py)."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from support.inprocess import FakeSink, aio

from server.chat.turn_runner import TurnInProgress
from server.domain import Claim, MessageRecord, new_id, utcnow
from server.recovery.sweep import sweep_orphans


def contents(sink: FakeSink, reply_id: str) -> list[tuple[int, str]]:
    return [(f["seq"], f["content"]) for f in sink.of("delta") if f["message_id"] == reply_id]


@aio
async def test_a_turn_is_ack_start_numbered_deltas_and_done(harness):
    async with harness(pieces=4) as h:
        sink = FakeSink()
        h.model.end()
        message = await h.send("u1", sink, "hello", client_id="k1")
        assert [f["type"] for f in sink.frames] == ["ack", "start", "delta", "delta", "delta", "delta", "done"]
        reply_id = sink.of("start")[0]["message_id"]
        assert contents(sink, reply_id) == [(1, "p1 "), (2, "p2 "), (3, "p3 "), (4, "p4 ")]
        done = sink.of("done")[0]
        assert done["status"] == "complete" and done["content"] == "p1 p2 p3 p4 "
        stored = await h.stored(message.conversation_id)
        assert [(m.role, m.status, m.content) for m in stored] == [("user", "complete", "hello"),
                                                                   ("assistant", "complete", "p1 p2 p3 p4 ")]
        orphans = await h.svc.db.read(lambda s: s.orphans("nobody"))
        assert orphans == [], "a stored reply leaves no record in flight"


@aio
async def test_a_reply_whose_socket_went_away_goes_on_and_is_stored_complete(harness):
    async with harness(pieces=5) as h:
        sink = FakeSink()
        turn = h.send("u1", sink, "hello")
        h.model.give(2)
        await sink.until(lambda s: len(s.of("delta")) == 2)
        sink.vanish()
        await turn  # the socket's turn ends at once ...
        assert h.svc.bus.in_flight("u1"), "... but its reply goes on, detached"
        h.model.end()
        await h.settle()
        stored = await h.stored(sink.of("ack")[0]["conversation_id"])
        assert (stored[1].status, stored[1].content) == ("complete", "p1 p2 p3 p4 p5 ")


@aio
async def test_with_detached_reply_s_0_the_reply_stops_with_its_socket(harness):
    async with harness(pieces=5, detached_reply_s=0) as h:
        sink = FakeSink()
        turn = h.send("u1", sink, "hello")
        h.model.give(2)
        await sink.until(lambda s: len(s.of("delta")) == 2)
        sink.vanish()
        await turn
        await h.settle()
        stored = await h.stored(sink.of("ack")[0]["conversation_id"])
        assert (stored[1].status, stored[1].content) == ("interrupted", "p1 p2 ")
        assert h.model.closed == 1, "the upstream request was closed"


@aio
async def test_a_detached_reply_stops_when_its_time_runs_out(harness):
    async with harness(pieces=5, detached_reply_s=0.2) as h:
        sink = FakeSink()
        h.send("u1", sink, "hello")
        h.model.give(1)
        await sink.until(lambda s: len(s.of("delta")) == 1)
        sink.vanish()
        await asyncio.sleep(0.1)
        assert h.svc.bus.in_flight("u1"), "still within its time"
        await h.settle()
        stored = await h.stored(sink.of("ack")[0]["conversation_id"])
        assert (stored[1].status, stored[1].content) == ("interrupted", "p1 ")


@aio
async def test_a_user_has_at_most_max_detached_replies(harness):
    async with harness(pieces=3, max_detached_replies=2) as h:
        sinks = [FakeSink() for _ in range(3)]
        for sink in sinks:
            h.send("u1", sink, "hello")
            await sink.until(lambda s: bool(s.of("start")))
        replies = h.svc.bus.in_flight("u1")
        for sink in sinks:
            sink.vanish()
        assert [r.stop_reason for r in replies] == [None, None, "interrupted"], "the third stopped at once"
        h.model.end()
        await h.settle()
        statuses = []
        for sink in sinks:
            statuses.append((await h.stored(sink.of("ack")[0]["conversation_id"]))[1].status)
        assert sorted(statuses) == ["complete", "complete", "interrupted"]


@aio
async def test_another_users_detached_replies_do_not_count(harness):
    async with harness(pieces=3, max_detached_replies=1) as h:
        a, b = FakeSink(), FakeSink()
        h.send("u1", a, "hello")
        h.send("u2", b, "hello")
        await a.until(lambda s: bool(s.of("start")))
        await b.until(lambda s: bool(s.of("start")))
        a.vanish()
        b.vanish()
        assert [r.stop_reason for r in h.svc.bus.in_flight("u1") + h.svc.bus.in_flight("u2")] == [None, None]


@aio
async def test_resume_replays_after_seq_then_follows_live_then_done(harness):
    async with harness(pieces=6) as h:
        first = FakeSink()
        h.send("u1", first, "hello")
        h.model.give(3)
        await first.until(lambda s: len(s.of("delta")) == 3)
        first.vanish()
        reply = h.svc.bus.in_flight("u1")[0]
        assert reply.listing()["seq"] == 3
        back = FakeSink()
        follower = h.svc.bus.follow(reply, back, after=2)
        back.adopt(follower)
        await follower.pump()
        h.model.end()
        done = await back.until_done(reply.id)
        assert back.of("start")[0] == {"type": "start", "conversation_id": reply.conversation_id,
                                       "message_id": reply.id, "reply_to": reply.reply_to}
        got = contents(back, reply.id)
        assert [seq for seq, _ in got] == [3, 4, 5, 6]
        kept = "p1 p2 "  # what the client had: its first `after` pieces
        assert kept + "".join(c for _, c in got) == done["content"] and done["status"] == "complete"


@aio
async def test_a_follower_that_stops_reading_slows_neither_the_reply_nor_the_others(harness):
    async with harness(pieces=50) as h:
        fast, slow = FakeSink(), FakeSink()
        h.send("u1", fast, "hello")
        await fast.until(lambda s: bool(s.of("start")))
        reply = h.svc.bus.in_flight("u1")[0]
        slow.stall()
        follower = h.svc.bus.follow(reply, slow, 0)
        slow.adopt(follower)
        await follower.pump()
        h.model.end()
        done = await fast.until_done(reply.id)
        assert done["status"] == "complete" and len(fast.of("delta")) == 50
        assert slow.frames == [], "the stalled follower got nothing yet"
        slow.read_again()
        await slow.until_done(reply.id)
        assert [seq for seq, _ in contents(slow, reply.id)] == list(range(1, 51)), "then all, in order, once"


@aio
async def test_cancel_by_id_stops_the_reply_and_every_follower_hears_cancelled(harness):
    async with harness(pieces=10) as h:
        origin, other = FakeSink(), FakeSink()
        h.send("u1", origin, "hello")
        h.model.give(2)
        await origin.until(lambda s: len(s.of("delta")) == 2)
        reply = h.svc.bus.in_flight("u1")[0]
        follower = h.svc.bus.follow(reply, other, 2)
        other.adopt(follower)
        await follower.pump()
        assert not h.svc.bus.stop("u2", reply.id, "cancelled"), "another user's cancel names nothing"
        assert h.svc.bus.stop("u1", reply.id, "cancelled")
        for sink in (origin, other):
            done = await sink.until_done(reply.id)
            assert (done["status"], done["content"]) == ("cancelled", "p1 p2 ")


@aio
async def test_a_plain_cancel_before_the_reply_exists_stops_it_at_once(harness):
    async with harness(pieces=10) as h:
        sink, turn = FakeSink(), TurnInProgress()
        turn.cancel()
        await h.send("u1", sink, "hello", turn=turn)
        done = sink.of("done")[0]
        assert (done["status"], done["content"]) == ("cancelled", "")


@aio
async def test_other_tabs_hear_the_message_then_its_reply(harness):
    async with harness(pieces=3) as h:
        origin, tab, stranger = FakeSink(), FakeSink(), FakeSink()
        h.svc.bus.watch("u1", tab)
        h.svc.bus.watch("u1", origin)
        h.svc.bus.watch("u2", stranger)
        h.model.end()
        message = await h.send("u1", origin, "hello", client_id="k")
        await tab.until_done()
        kinds = [f["type"] for f in tab.frames]
        assert kinds == ["message_added", "start", "delta", "delta", "delta", "done"]
        added = tab.frames[0]
        assert added["conversation_id"] == message.conversation_id
        assert added["message"]["id"] == message.id and added["message"]["content"] == "hello"
        assert not origin.of("message_added"), "never for the socket's own message"
        assert stranger.frames == [], "nothing crosses between users"


@aio
async def test_a_reply_followed_by_another_tab_is_not_detached(harness):
    async with harness(pieces=3, detached_reply_s=0) as h:
        origin, tab = FakeSink(), FakeSink()
        h.svc.bus.watch("u1", tab)
        h.send("u1", origin, "hello")
        h.model.give(1)
        await tab.until(lambda s: len(s.of("delta")) == 1)
        origin.vanish()
        h.model.end()
        done = await tab.until_done()
        assert done["status"] == "complete"


@aio
async def test_a_duplicate_follows_the_reply_in_flight(harness):
    async with harness(pieces=4) as h:
        a, b = FakeSink(), FakeSink()
        h.send("u1", a, "hello", client_id="k")
        h.model.give(2)
        await a.until(lambda s: len(s.of("delta")) == 2)
        dup = h.send("u1", b, "ignored", client_id="k")
        await b.until(lambda s: len(s.of("delta")) == 2)
        h.model.end()
        await dup
        assert b.frames[0]["type"] == "ack" and b.frames[0]["duplicate"] is True
        reply_id = a.of("start")[0]["message_id"]
        assert b.of("start")[0]["message_id"] == reply_id
        assert b.of("done")[0]["content"] == a.of("done")[0]["content"] == "p1 p2 p3 p4 "


@aio
async def test_a_duplicate_waiting_on_a_reply_that_ends_interrupted_gets_a_fresh_one(harness):
    async with harness(pieces=3) as h:
        a, b = FakeSink(), FakeSink()
        h.send("u1", a, "hello", client_id="k")
        await a.until(lambda s: bool(s.of("start")))
        first = h.svc.bus.in_flight("u1")[0]
        dup = h.send("u1", b, "ignored", client_id="k")
        await b.until(lambda s: bool(s.of("start")))
        first.stop("interrupted")
        await b.until(lambda s: len(s.of("start")) == 2)
        h.model.end()
        await dup
        starts = b.of("start")
        assert starts[0]["message_id"] == first.id and starts[1]["message_id"] != first.id
        assert [f["status"] for f in b.of("done")] == ["complete"], "the interrupted end was not for it"
        stored = await h.stored(first.conversation_id)
        assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "interrupted"),
                                                        ("assistant", "complete")]


@aio
async def test_the_sweep_stores_a_dead_owners_replies_as_interrupted(harness):
    async with harness() as h:
        now = utcnow()

        def crashed_turn(store):  # what a process that died mid-reply left in the database
            conversation_id = store.create_conversation("u1", "hello", now)
            message = store.add_message(message_id=new_id(), conversation_id=conversation_id, user_id="u1",
                                        seq=1, role="user", content="hello", status="complete", client_id="k",
                                        reply_to=None, now=now)
            store.claim_reply(message, "u1", Claim("r-dead", "old-owner"))
            store.checkpoint_replies([(message.id, "r-dead", "half a ")])
            return message

        message: MessageRecord = await h.svc.db.write(crashed_turn)
        assert await sweep_orphans(h.svc.db, "old-owner") == 0, "a live owner's replies are left alone"
        assert await sweep_orphans(h.svc.db, h.svc.owner) == 1
        stored = await h.stored(message.conversation_id)
        assert [(m.id, m.status, m.content, m.reply_to) for m in stored[1:]] == [
            ("r-dead", "interrupted", "half a ", message.id)]
        assert await sweep_orphans(h.svc.db, h.svc.owner) == 0, "swept once"


@aio
async def test_a_long_reply_checkpoints_its_text_for_the_sweep(harness):
    async with harness(pieces=10, reply_checkpoint_s=0.05) as h:
        async def stored_text(expected: str) -> str:
            for _ in range(200):
                orphans = await h.svc.db.read(lambda s: s.orphans("someone else"))
                if orphans[0].content == expected:
                    break
                await asyncio.sleep(0.01)
            return orphans[0].content

        sink = FakeSink()
        h.send("u1", sink, "hello")
        h.model.give(2)
        await sink.until(lambda s: len(s.of("delta")) == 2)
        # A round after the interval writes the text so far; a later one, the longer text.
        assert await stored_text("p1 p2 ") == "p1 p2 "
        h.model.give(1)
        await sink.until(lambda s: len(s.of("delta")) == 3)
        assert await stored_text("p1 p2 p3 ") == "p1 p2 p3 "
        h.model.end()
        await h.settle()
        assert len(h.svc.checkpoints) == 0, "a stored reply is no longer checkpointed"


@aio
async def test_a_checkpoint_that_failed_is_written_again_when_next_due(harness):
    async with harness(pieces=10, reply_checkpoint_s=0.05) as h:
        # A real failure of the database for these writes: a trigger that aborts them.
        await h.svc.db.write(lambda s: s.conn.execute(text(
            "CREATE TRIGGER no_checkpoints BEFORE UPDATE OF content ON replies_in_flight "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END")))
        sink = FakeSink()
        h.send("u1", sink, "hello")
        h.model.give(2)
        await sink.until(lambda s: len(s.of("delta")) == 2)
        await asyncio.sleep(0.2)  # rounds that find it due and fail
        orphans = await h.svc.db.read(lambda s: s.orphans("someone else"))
        assert [o.content for o in orphans] == [""]
        await h.svc.db.write(lambda s: s.conn.execute(text("DROP TRIGGER no_checkpoints")))
        # No piece since: the text the failed rounds took is written all the same.
        for _ in range(200):
            orphans = await h.svc.db.read(lambda s: s.orphans("someone else"))
            if orphans[0].content:
                break
            await asyncio.sleep(0.01)
        assert [o.content for o in orphans] == ["p1 p2 "]
        h.model.end()
        await h.settle()


@aio
async def test_a_short_reply_writes_no_checkpoint(harness):
    async with harness(pieces=5, reply_checkpoint_s=60) as h:
        sink = FakeSink()
        h.send("u1", sink, "hello")
        h.model.give(3)
        await sink.until(lambda s: len(s.of("delta")) == 3)
        orphans = await h.svc.db.read(lambda s: s.orphans("someone else"))
        assert [o.content for o in orphans] == [""]
        h.model.end()
        await h.settle()
