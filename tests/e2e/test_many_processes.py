"""Many processes, one PostgreSQL: two real chat-server processes on one database behave as one
server (docs/multi-process.md). PostgreSQL only: SQLite serves one process."""

from __future__ import annotations

import asyncio
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
from support.client import Client, Rest, aio, cid, poll, words
from support.servers import ServerProcess, pg_execute

pytestmark = [pytest.mark.postgres, pytest.mark.slow]





def dbname(server: ServerProcess) -> str:
    return server.db_url.rsplit("/", 1)[1]


async def open_conversation(server: ServerProcess, token: str | None = None) -> tuple[Client, str]:
    c = await Client.open(server, token=token)
    t = await c.complete("hello", conversation_id=None)
    return c, t.ack["conversation_id"]


def replies_by_message(messages: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for m in messages:
        if m["role"] == "assistant":
            out.setdefault(m["reply_to"], []).append(m)
    return out


# -- duplicates ----------------------------------------------------------------------------------------
@aio
async def test_the_same_client_id_at_the_same_moment_on_two_processes_is_one_message_one_reply(pair):
    a, b = pair(CHAT_ECHO_DELAY_MS=5)
    ca, conv = await open_conversation(a)
    cb = await Client.open(b, token=ca.token)
    try:
        for i in range(12):
            k = cid(f"same{i}")
            content = f"twice {i} " + words(10)
            await asyncio.gather(ca.message(content, client_id=k, conversation_id=conv),
                                 cb.message(content, client_id=k, conversation_id=conv))
            ta, tb = await asyncio.gather(ca.collect(), cb.collect())
            assert sorted([ta.ack["duplicate"], tb.ack["duplicate"]]) == [False, True], (ta.frames, tb.frames)
            assert ta.ack["message_id"] == tb.ack["message_id"]
            for t in (ta, tb):
                assert t.done is not None and t.done["status"] == "complete", t.frames
                if t.deltas:  # streamed (it followed the reply), so the pieces make the whole
                    assert t.text == t.done["content"]
            assert ta.done["message_id"] == tb.done["message_id"]
            assert ta.done["content"] == tb.done["content"]
        stored = Rest(a, ca.token).all_messages(conv)
        users = [m for m in stored if m["role"] == "user"]
        assert len(users) == 13 and len({m["client_id"] for m in users}) == 13
        assert all(len(rs) == 1 for rs in replies_by_message(stored).values())
        assert len(replies_by_message(stored)) == 13
    finally:
        await ca.close()
        await cb.close()


# -- resume, cancel by id, sync, DELETE ------------------------------------------------------------------
@aio
async def test_resume_cancel_sync_and_delete_cross_processes(pair):
    a, b = pair(CHAT_ECHO_DELAY_MS=40)
    ca, conv = await open_conversation(a)
    tab = await Client.open(b, token=ca.token, sync=True)  # another tab, on the other process
    cb = await Client.open(b, token=ca.token)
    try:
        # ?sync=1 on B hears a message committed on A, then its reply.
        await ca.message("from the first tab " + words(8), client_id=cid(), conversation_id=conv)
        t = await ca.collect()
        added = await tab.expect("message_added")
        assert added["message"]["id"] == t.ack["message_id"] and added["conversation_id"] == conv
        r = await tab.collect()
        assert r.start["message_id"] == t.start["message_id"] and r.done["status"] == "complete"
        assert r.text == r.done["content"] == t.done["content"]

        # resume on B of a reply generated on A, from the last seq the client had.
        await ca.message(words(40), client_id=cid(), conversation_id=conv)
        t = await ca.collect(stop_after_deltas=3)
        reply_id = t.start["message_id"]
        back = await Client.open(b, token=ca.token)
        listed = back.ready["replies_in_flight"]
        assert [x["message_id"] for x in listed] == [reply_id], back.ready
        assert listed[0]["reply_to"] == t.ack["message_id"] and listed[0]["conversation_id"] == conv
        await back.send({"type": "resume", "message_id": reply_id, "after": 3})
        r = await back.collect()
        assert r.start["message_id"] == reply_id and r.start["reply_to"] == t.ack["message_id"]
        assert [d["seq"] for d in r.deltas] == list(range(4, 4 + len(r.deltas)))
        had = "".join(d["content"] for d in t.deltas[:3])
        assert had + r.text == r.done["content"] and r.done["status"] == "complete"
        await back.close()
        await ca.collect()
        tab_frames = await tab.collect()  # the tab followed that one too
        assert tab_frames.done["message_id"] == reply_id

        # cancel by id on B stops a reply generated on A, within a second or so.
        await ca.message(words(200), client_id=cid(), conversation_id=conv)
        t = await ca.collect(stop_after_deltas=2)
        sent = time.monotonic()
        await cb.send({"type": "cancel", "message_id": t.start["message_id"]})
        rest = await ca.collect(timeout=10)
        assert rest.done["status"] == "cancelled" and time.monotonic() - sent < 3, rest.frames
        await tab.collect()

        # A DELETE on B stops a reply in flight on A at once (the reply alone would take 16 s);
        # B's sync tab hears of the deletion.
        await ca.message(words(400), client_id=cid(), conversation_id=conv)
        t = await ca.collect(stop_after_deltas=2)
        deleted = time.monotonic()
        assert Rest(b, ca.token).delete(conv).status_code == 204
        try:
            ended = await ca.collect(timeout=2)
        except TimeoutError:
            raise AssertionError("the reply on A went on for 2 s after the DELETE on B") from None
        assert time.monotonic() - deleted < 2
        assert ended.done is None and ended.frames[-1]["type"] == "error", ended.frames
        assert ended.frames[-1]["code"] == "not_found"
        deadline = time.monotonic() + 10
        while True:
            frame = await tab.recv(max(0.1, deadline - time.monotonic()))
            if frame["type"] == "conversation_deleted":
                assert frame["conversation_id"] == conv
                break
        assert Rest(a, ca.token).messages(conv).status_code == 404
    finally:
        await ca.close()
        await cb.close()
        await tab.close()


@aio
async def test_cancel_by_id_from_another_user_on_another_process_does_not_stop_the_reply(pair):
    """Cancel by id crosses processes as a broadcast; the process generating the reply stops it
    only for the reply's own user, so a reply id that leaked to someone else stops nothing."""
    a, b = pair(CHAT_ECHO_DELAY_MS=40)
    ca, conv = await open_conversation(a)
    intruder = await Client.open(b)  # another user, on the other process
    try:
        content = words(50)  # 2 s of reply: the cancel arrives long before its end
        await ca.message(content, client_id=cid(), conversation_id=conv)
        t = await ca.collect(stop_after_deltas=2)
        reply_id = t.start["message_id"]
        await intruder.send({"type": "cancel", "message_id": reply_id})
        rest = await ca.collect(timeout=30)
        assert rest.done is not None and rest.done["message_id"] == reply_id, rest.frames
        assert rest.done["status"] == "complete", rest.frames
        assert rest.done["content"] == t.text + rest.text and rest.done["content"].endswith(content)
        stored = replies_by_message(Rest(b, ca.token).all_messages(conv))[t.ack["message_id"]]
        assert [(m["id"], m["status"]) for m in stored] == [(reply_id, "complete")]
    finally:
        await ca.close()
        await intruder.close()


# -- a process dies ------------------------------------------------------------------------------------
@aio
async def test_kill_9_mid_reply_tells_the_other_processs_follower_and_regenerates_for_its_duplicate(pair):
    a, b = pair(CHAT_ECHO_DELAY_MS=60)
    ca, conv = await open_conversation(a)
    follower = await Client.open(b, token=ca.token)
    duplicate = await Client.open(b, token=ca.token)
    try:
        k = cid()
        await ca.message(words(120), client_id=k, conversation_id=conv)
        t = await ca.collect(stop_after_deltas=2)
        reply_id = t.start["message_id"]
        await follower.send({"type": "resume", "message_id": reply_id})
        await follower.expect("start")
        await duplicate.message("ignored", client_id=k)
        ack = await duplicate.expect("ack")
        assert ack["duplicate"] and ack["message_id"] == t.ack["message_id"]
        await asyncio.sleep(0.3)  # both follow it now
        a.kill()
        killed = time.monotonic()
        r = await follower.collect(timeout=30)
        assert r.done is not None and r.done["status"] == "interrupted" and r.done["message_id"] == reply_id
        fresh = await duplicate.collect(timeout=60)  # it may stream the old one first, with no end
        starts = [f for f in fresh.frames if f["type"] == "start"]
        assert starts and starts[-1]["message_id"] != reply_id, fresh.frames
        assert time.monotonic() - killed < 30
        assert fresh.done["message_id"] == starts[-1]["message_id"]
        assert fresh.done["status"] == "complete" and fresh.done["content"].endswith(words(120).split()[-1])
        stored = Rest(b, ca.token).every_message(conv)  # the interrupted reply and its sibling
        replies = replies_by_message(stored)[t.ack["message_id"]]
        assert [(m["id"], m["status"]) for m in replies] == [(reply_id, "interrupted"),
                                                              (starts[-1]["message_id"], "complete")]
    finally:
        await follower.close()
        await duplicate.close()


@aio
async def test_sigterm_tells_followers_on_other_processes_and_removes_its_lease(pair):
    a, b = pair(CHAT_ECHO_DELAY_MS=60)
    ca, conv = await open_conversation(a)
    follower = await Client.open(b, token=ca.token)
    try:
        await ca.message(words(300), client_id=cid(), conversation_id=conv)
        t = await ca.collect(stop_after_deltas=1)
        await follower.send({"type": "resume", "message_id": t.start["message_id"]})
        await follower.expect("start")
        a.signal(signal.SIGTERM)
        r = await follower.collect(timeout=10)
        assert r.done["status"] == "interrupted" and r.done["message_id"] == t.start["message_id"]
        assert r.done["content"].startswith("".join(d["content"] for d in t.deltas))
        a.wait(10)
        rows = await _pg_rows("SELECT count(*) FROM process_leases", dbname(b))
        assert rows == [(1,)], "only the live process keeps a lease"
    finally:
        await follower.close()


# -- the LISTEN connection dies ----------------------------------------------------------------------
@aio
async def test_turns_and_cross_process_follows_survive_a_killed_listen_connection(pair):
    a, b = pair(CHAT_ECHO_DELAY_MS=30)
    ca, conv = await open_conversation(a)
    cb, conv_b = await open_conversation(b, token=ca.token)
    follower = await Client.open(b, token=ca.token)
    try:
        await ca.message(words(150), client_id=cid(), conversation_id=conv)
        t = await ca.collect(stop_after_deltas=2)
        await follower.send({"type": "resume", "message_id": t.start["message_id"]})
        await follower.expect("start")
        async def load_b() -> None:
            for i in range(8):
                await cb.complete(f"load {i} " + words(10), conversation_id=conv_b)

        load = asyncio.ensure_future(load_b())
        # Every LISTEN connection of both processes, cut under load.
        pg_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE application_name LIKE 'chat-server %'", dbname(a))
        await load
        r = await follower.collect(timeout=30)
        rest = await ca.collect(timeout=30)
        assert rest.done["status"] == "complete"
        assert r.done["status"] == "complete" and r.done["content"] == rest.done["content"]
        assert r.text == r.done["content"], "no piece lost or repeated across the gap"
        # And a new cross-process follow works once the connections are back.
        await ca.message(words(30), client_id=cid(), conversation_id=conv)
        t = await ca.collect(stop_after_deltas=1)
        await follower.send({"type": "resume", "message_id": t.start["message_id"]})
        r = await follower.collect(timeout=30)
        assert r.done["status"] == "complete" and r.text == r.done["content"]
        await ca.collect()
        assert a.metric("chat_notify_reconnects_total") >= 1 and b.metric("chat_notify_reconnects_total") >= 1
    finally:
        await ca.close()
        await cb.close()
        await follower.close()


# -- a slow follower elsewhere ---------------------------------------------------------------------------
@aio
async def test_a_follower_that_does_not_read_on_another_process_does_not_slow_the_producer(pair):
    a, b = pair(CHAT_ECHO_DELAY_MS=20, CHAT_SEND_TIMEOUT_S=3)
    ca, conv = await open_conversation(a)
    big = " ".join("x" * 1000 + str(i) for i in range(30))  # 30 pieces of 1 kB
    try:
        started = time.monotonic()
        await ca.message(big, client_id=cid(), conversation_id=conv)
        await ca.collect(timeout=60)
        alone = time.monotonic() - started

        stalled = await Client.open(b, token=ca.token, max_queue=1)
        await ca.message(big, client_id=cid(), conversation_id=conv)
        t = await ca.collect(stop_after_deltas=1)
        stalled.ws.transport.pause_reading()  # the client stops reading
        await stalled.send({"type": "resume", "message_id": t.start["message_id"]})
        started = time.monotonic()
        rest = await ca.collect(timeout=60)
        followed = time.monotonic() - started
        assert rest.done["status"] == "complete"
        assert followed < 2 * alone + 1, (followed, alone)
    finally:
        await ca.close()


# -- kill -9 stress -----------------------------------------------------------------------------------
@aio
async def test_kill_9_stress_over_two_processes_loses_and_duplicates_nothing(pair):
    """Clients spread over two processes; one is killed (-9) and restarted again and again. A
    client whose socket dies resends its message (same client_id) to a process that is up, as a
    real client would, until it gets its `done`."""
    a, b = pair(CHAT_ECHO_DELAY_MS=20, CHAT_RATE_LIMIT_PER_MINUTE=100000)
    first = await Client.open(a)
    token = first.token
    await first.close()
    acked: dict[str, str] = {}  # client_id -> user message id
    completed: dict[str, dict] = {}  # client_id -> its done
    stop = asyncio.Event()

    async def chatter(name: str) -> None:
        n, conv, pending = 0, None, None
        while True:
            server = (a, b)[n % 2]
            n += 1
            if stop.is_set():
                server = b  # b stays up: finish what is pending there
                if pending is None:
                    return
            try:
                c = await Client.open(server, token=token)
            except Exception:
                await asyncio.sleep(0.2)
                continue
            try:
                while pending is not None or not stop.is_set():
                    if pending is None:
                        pending = cid(name)
                    await c.message(f"{name} {n} {pending} " + words(12), client_id=pending, conversation_id=conv)
                    t = await c.collect(timeout=30)
                    if t.ack is not None:
                        acked[pending] = t.ack["message_id"]
                        conv = t.ack["conversation_id"]
                    if t.done is not None:
                        assert t.done["status"] == "complete", t.frames
                        completed[pending] = t.done
                        pending = None
                    elif t.error is not None and t.error["code"] != "unavailable":
                        raise AssertionError(t.frames)
            except (AssertionError, KeyError):
                raise
            except Exception:
                pass  # the socket died with its process: resend elsewhere
            finally:
                await c.close()

    tasks = [asyncio.ensure_future(chatter(f"s{i}")) for i in range(6)]
    for _ in range(3):
        await asyncio.sleep(1.5)
        a.kill()
        await asyncio.sleep(0.5)
        a.start()
    await asyncio.sleep(1.5)
    stop.set()
    done, _ = await asyncio.wait(tasks, timeout=90)
    for task in done:
        task.result()  # a chatter's assertion fails the test
    assert len(done) == len(tasks), "every client got the done of every message it sent"
    assert len(acked) > 20 and set(completed) == set(acked)

    rest = Rest(b, token)

    def stored() -> list[dict]:
        return [m for conversation in rest.conversations() for m in rest.all_messages(conversation["id"])]

    def unanswered(messages: list[dict]) -> list[str]:
        replies = replies_by_message(messages)
        return [m["id"] for m in messages if m["role"] == "user" and m["id"] not in replies]

    messages = await poll(stored, lambda ms: not unanswered(ms), timeout=40)
    assert not unanswered(messages), "every acknowledged message ends with a stored reply"
    users = [m for m in messages if m["role"] == "user"]
    assert sorted(m["client_id"] for m in users) == sorted(acked), "nothing lost, nothing stored twice"
    replies = replies_by_message(messages)
    for m in users:
        final = [r for r in replies[m["id"]] if r["status"] != "interrupted"]
        assert [r["id"] for r in final] == [completed[m["client_id"]]["message_id"]], replies[m["id"]]
        assert final[0]["content"] == completed[m["client_id"]]["content"]
    assert len({r["id"] for rs in replies.values() for r in rs}) == sum(len(rs) for rs in replies.values())


async def _pg_rows(sql: str, db: str) -> list[tuple]:
    import asyncpg
    from support.servers import PG_ADMIN_URL

    conn = await asyncpg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + db)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


# -- starting together -----------------------------------------------------------------------------
def test_three_processes_starting_at_once_on_a_fresh_database_each_keep_a_lease(make_server, tmp_root):
    first = make_server("postgres", start=False)
    others = [ServerProcess(first.db_url, {}, Path(tempfile.mkdtemp(prefix="srv-n-", dir=tmp_root)))
              for _ in range(2)]
    servers = [first, *others]
    try:
        barrier = threading.Barrier(len(servers))
        failures: list[BaseException] = []

        def start(server: ServerProcess) -> None:
            barrier.wait()
            try:
                server.start(timeout=60)
            except BaseException as e:  # reported below
                failures.append(e)

        threads = [threading.Thread(target=start, args=(s,)) for s in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == [], failures
        rows = asyncio.run(_pg_rows("SELECT count(*) FROM process_leases", dbname(first)))
        assert rows == [(3,)], [s.log_tail(20) for s in servers]
        swept = [line for s in servers for line in s.log_text().splitlines()
                 if "stored" in line and "interrupted" in line]
        assert swept == [], "no one took another for dead"

        async def a_turn_each() -> None:
            c = await Client.open(first)
            try:
                for s in servers:
                    other = await Client.open(s, token=c.token)
                    await other.complete("hello from " + s.base_url, conversation_id=None)
                    await other.close()
            finally:
                await c.close()

        asyncio.run(a_turn_each())
    finally:
        for s in others:
            s.kill()


@aio
async def test_a_process_taken_for_dead_ends_its_reply_as_the_sweep_stored_it(make_server):
    # As when a process lost the database for longer than its lease: another one swept its reply.
    server = make_server("postgres", CHAT_ECHO_DELAY_MS=40)
    c, conv = await open_conversation(server)
    try:
        await c.message(words(60), client_id=cid(), conversation_id=conv)
        t = await c.collect(stop_after_deltas=2)
        await _pg_rows("WITH gone AS (DELETE FROM process_leases RETURNING owner) SELECT count(*) FROM gone",
                       dbname(server))
        from server.config import Settings
        from server.db.engine import make_engine
        from server.db.uow import Database
        from server.recovery.sweep import LeaseTimes, sweep_dead

        db = Database(make_engine(Settings(database_url=server.db_url)))
        try:
            swept = await sweep_dead(db, "another-process", LeaseTimes(15, 1, 3, True))
        finally:
            await db.dispose()
        assert [o.reply_id for o in swept] == [t.start["message_id"]]
        r = await c.collect(timeout=30)
        assert r.done["status"] == "interrupted" and r.done["message_id"] == t.start["message_id"], r.frames
        replies = replies_by_message(Rest(server, c.token).all_messages(conv))[t.ack["message_id"]]
        assert [m["status"] for m in replies] == ["interrupted"], "stored once"
    finally:
        await c.close()


@aio
async def test_with_pg_notify_off_one_process_still_sweeps_what_a_killed_one_left(make_server):
    # CHAT_PG_NOTIFY=false (PgBouncer in transaction mode): no LISTEN session, so a death shows
    # only when the lease runs out; the restart stores the reply within the contract's 30 s.
    server = make_server("postgres", CHAT_ECHO_DELAY_MS=100, CHAT_PG_NOTIFY="false", CHAT_LEASE_S=5)
    c, conv = await open_conversation(server)
    await c.message(words(100), client_id=cid(), conversation_id=conv)
    t = await c.collect(stop_after_deltas=2)
    server.kill()
    await c.close()
    server.start()
    started = time.monotonic()
    messages = await poll(lambda: Rest(server, c.token).all_messages(conv), lambda ms: len(ms) >= 4, timeout=30)
    assert [(m["role"], m["status"]) for m in messages][2:] == [("user", "complete"), ("assistant", "interrupted")]
    assert messages[3]["id"] == t.start["message_id"] and time.monotonic() - started < 30
    listening = await _pg_rows("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'chat-server %' "
                               "AND datname = current_database()", dbname(server))
    assert listening == [(0,)], "no LISTEN connection"
