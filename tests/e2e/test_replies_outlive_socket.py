"""Replies that outlive their socket, against a real server on both databases: detached replies,
`resume`, `ready.replies_in_flight`, `cancel` by id, other tabs (?sync=1), and the sweep after
kill -9."""

from __future__ import annotations

import json
import signal
import socket

import pytest
from support.client import Client, Rest, aio, cid, poll, words
from websockets.asyncio.client import connect


def stored_messages(server, token: str, conversation_id: str) -> list[dict]:
    return Rest(server, token).all_messages(conversation_id)


async def stored_reply(server, token: str, conversation_id: str, timeout: float = 20) -> dict:
    messages = await poll(lambda: stored_messages(server, token, conversation_id),
                          lambda ms: len(ms) >= 2, timeout=timeout)
    assert len(messages) >= 2, messages
    return messages[1]


@aio
async def test_every_delta_carries_its_seq_from_1(server):
    c = await Client.open(server)
    try:
        t = await c.complete("one two three")
        assert [d["seq"] for d in t.deltas] == list(range(1, len(t.deltas) + 1))
        assert c.ready["replies_in_flight"] == []
    finally:
        await c.close()


@aio
async def test_a_reply_goes_on_after_its_socket_closes_and_is_stored_complete(slow_server):
    c = await Client.open(slow_server)
    await c.message(words(40), client_id=cid())
    t = await c.collect(stop_after_deltas=2)
    await c.close()
    reply = await stored_reply(slow_server, c.token, t.ack["conversation_id"])
    assert reply["status"] == "complete", reply
    assert reply["content"].split() == ["You", "said:", *words(40).split()]


@aio
async def test_with_detached_reply_s_0_a_closed_socket_stops_its_reply(db, make_server):
    server = make_server(db, CHAT_ECHO_DELAY_MS=50, CHAT_DETACHED_REPLY_S=0)
    c = await Client.open(server)
    await c.message(words(60), client_id=cid())
    t = await c.collect(stop_after_deltas=2)
    await c.close()
    reply = await stored_reply(server, c.token, t.ack["conversation_id"])
    assert reply["status"] == "interrupted" and len(reply["content"].split()) < 40, reply


@aio
async def test_a_returning_client_resumes_from_its_last_seq_and_gets_every_piece_once(slow_server):
    c = await Client.open(slow_server)
    await c.message(words(40), client_id=cid())
    t = await c.collect(stop_after_deltas=3)
    reply_id = t.start["message_id"]
    c.ws.transport.abort()  # the network dropped: no close frame
    back = await Client.open(slow_server, token=c.token)
    try:
        listed = back.ready["replies_in_flight"]
        assert [r["message_id"] for r in listed] == [reply_id], back.ready
        assert listed[0]["reply_to"] == t.ack["message_id"] and listed[0]["seq"] >= 3
        assert listed[0]["conversation_id"] == t.ack["conversation_id"]
        await back.send({"type": "resume", "message_id": reply_id, "after": 3})
        r = await back.collect()
        assert r.start == {"type": "start", "conversation_id": t.ack["conversation_id"], "message_id": reply_id,
                           "reply_to": t.ack["message_id"]}
        assert [d["seq"] for d in r.deltas] == list(range(4, 4 + len(r.deltas)))
        had = "".join(d["content"] for d in t.deltas[:3])
        assert had + r.text == r.done["content"] and r.done["status"] == "complete"
    finally:
        await back.close()


@aio
async def test_resume_of_a_finished_reply_answers_done_from_the_database(server):
    c = await Client.open(server)
    try:
        t = await c.complete("hello there", client_id=cid())
        for by in ({"message_id": t.done["message_id"]}, {"reply_to": t.ack["message_id"]}):
            await c.send({"type": "resume", **by, "after": 1})
            done = await c.expect("done")
            assert done == t.done, by
    finally:
        await c.close()


@aio
async def test_resume_with_bad_ids_answers_and_the_socket_stays_usable(server):
    a = await Client.open(server)
    b = await Client.open(server)
    try:
        t = await a.complete("mine", client_id=cid())
        for frame, code in [
            ({"type": "resume"}, "invalid"),
            ({"type": "resume", "message_id": "x", "reply_to": "y"}, "invalid"),
            ({"type": "resume", "message_id": 5}, "invalid"),
            ({"type": "resume", "message_id": t.done["message_id"], "after": -1}, "invalid"),
            ({"type": "resume", "message_id": t.done["message_id"], "after": "3"}, "invalid"),
            ({"type": "resume", "message_id": "no-such-reply"}, "not_found"),
            ({"type": "resume", "message_id": "x" * 500}, "not_found"),
            ({"type": "resume", "message_id": "a\u0000b"}, "not_found"),
            ({"type": "resume", "reply_to": "no-such-message"}, "not_found"),
            ({"type": "resume", "message_id": t.ack["message_id"]}, "not_found"),  # a user message, not a reply
        ]:
            await a.send(frame)
            await a.expect_error(code)
        for by in ({"message_id": t.done["message_id"]}, {"reply_to": t.ack["message_id"]}):
            await b.send({"type": "resume", **by})
            await b.expect_error("not_found")  # another user's: the same answer as unknown
        await a.complete("still usable")
        await b.complete("still usable")
    finally:
        await a.close()
        await b.close()


@aio
async def test_following_a_reply_does_not_block_the_sockets_own_turns(slow_server):
    a = await Client.open(slow_server)
    b = await Client.open(slow_server, token=a.token)
    try:
        await a.message(words(60), client_id=cid())
        t = await a.collect(stop_after_deltas=1)
        await b.send({"type": "resume", "message_id": t.start["message_id"], "after": 0})
        await b.message("short", client_id=cid())
        own_done = followed_done = None
        while own_done is None or followed_done is None:
            frame = await b.recv(30)
            if frame["type"] == "done" and frame["message_id"] == t.start["message_id"]:
                followed_done = frame
            elif frame["type"] == "done":
                own_done = frame
                assert followed_done is None, "the short turn finished while the long reply streamed"
        assert own_done["content"] == "You said: short"
    finally:
        await a.close()
        await b.close()


@aio
async def test_cancel_by_id_from_another_socket_stops_the_reply_for_every_follower(slow_server):
    a = await Client.open(slow_server)
    b = await Client.open(slow_server, token=a.token)
    stranger = await Client.open(slow_server)
    try:
        await a.message(words(80), client_id=cid())
        t = await a.collect(stop_after_deltas=2)
        reply_id = t.start["message_id"]
        await stranger.send({"type": "cancel", "message_id": reply_id})  # not theirs: ignored
        await b.send({"type": "cancel", "message_id": "no-such-reply"})  # ignored, no answer
        await b.send({"type": "resume", "message_id": reply_id, "after": 2})
        await b.expect("start")
        await b.send({"type": "cancel", "message_id": reply_id})
        ra, rb = await a.collect(), await b.collect()
        assert ra.done["status"] == rb.done["status"] == "cancelled"
        assert ra.done["content"] == rb.done["content"] and len(ra.done["content"].split()) < 60
        stored = await stored_reply(slow_server, a.token, t.ack["conversation_id"])
        assert stored["status"] == "cancelled"
    finally:
        for c in (a, b, stranger):
            await c.close()


@aio
async def test_other_tabs_see_the_turn_live_and_the_deletion(slow_server):
    a = await Client.open(slow_server, sync=True)
    tab = await Client.open(slow_server, token=a.token, sync=True)
    plain = await Client.open(slow_server, token=a.token)
    stranger = await Client.open(slow_server, sync=True)
    try:
        k = cid()
        await a.message("hello from a", client_id=k)
        t = await a.collect()
        added = await tab.expect("message_added")
        assert added["conversation_id"] == t.ack["conversation_id"]
        assert added["message"]["id"] == t.ack["message_id"] and added["message"]["content"] == "hello from a"
        assert added["message"]["client_id"] == k and added["message"]["role"] == "user"
        seen = await tab.collect()
        assert seen.start == t.start and seen.done == t.done and seen.text == t.text
        assert [f["type"] for f in t.frames if f["type"] == "message_added"] == [], "not for its own message"
        assert Rest(slow_server, a.token).delete(t.ack["conversation_id"]).status_code == 204
        for c in (a, tab):
            gone = await c.expect("conversation_deleted")
            assert gone["conversation_id"] == t.ack["conversation_id"]
        # The socket without sync and another user's socket heard none of it.
        await plain.send({"type": "history", "conversation_id": "none"})
        assert (await plain.recv())["type"] == "error"
        await stranger.send({"type": "history", "conversation_id": "none"})
        assert (await stranger.recv())["type"] == "error"
    finally:
        for c in (a, tab, plain, stranger):
            await c.close()


@aio
async def test_a_resend_whose_reply_streams_elsewhere_streams_it(slow_server):
    a = await Client.open(slow_server)
    b = await Client.open(slow_server, token=a.token)
    try:
        k = cid()
        await a.message(words(30), client_id=k)
        t = await a.collect(stop_after_deltas=2)
        await b.message("ignored", client_id=k)
        r = await b.collect()
        assert r.ack["duplicate"] is True and r.start["message_id"] == t.start["message_id"]
        assert r.text == r.done["content"] and r.done["status"] == "complete"
    finally:
        await a.close()
        await b.close()


@aio
async def test_a_user_has_at_most_max_detached_replies(db, make_server):
    server = make_server(db, CHAT_ECHO_DELAY_MS=50, CHAT_MAX_DETACHED_REPLIES=1)
    first = await Client.open(server)
    token = first.token
    acks = []
    for c in [first, await Client.open(server, token=token)]:
        await c.message(words(60), client_id=cid())
        acks.append((await c.collect(stop_after_deltas=1)).ack)
        await c.close()
    replies = [await stored_reply(server, token, ack["conversation_id"]) for ack in acks]
    assert sorted(r["status"] for r in replies) == ["complete", "interrupted"]


@pytest.mark.slow
@aio
async def test_after_kill_9_the_next_start_stores_the_reply_as_interrupted(db, make_server):
    server = make_server(db, CHAT_ECHO_DELAY_MS=100)
    c = await Client.open(server)
    k = cid()
    await c.message(words(100), client_id=k)
    t = await c.collect(stop_after_deltas=2)
    server.kill()
    server.start()
    reply = await stored_reply(server, c.token, t.ack["conversation_id"], timeout=30)
    assert reply["id"] == t.start["message_id"] and reply["status"] == "interrupted"
    assert reply["reply_to"] == t.ack["message_id"]
    back = await Client.open(server, token=c.token)
    try:
        assert back.ready["replies_in_flight"] == []
        await back.send({"type": "resume", "message_id": t.start["message_id"]})
        assert (await back.expect("done"))["status"] == "interrupted"
        await back.message("ignored", client_id=k)  # the resend generates a new reply
        r = await back.collect(timeout=60)
        assert r.ack["duplicate"] and r.start["message_id"] != t.start["message_id"]
        assert r.done["status"] == "complete"
    finally:
        await back.close()


@aio
async def test_sigterm_tells_followers_interrupted(db, make_server):
    server = make_server(db, CHAT_ECHO_DELAY_MS=100)
    a = await Client.open(server)
    b = await Client.open(server, token=a.token)
    await a.message(words(100), client_id=cid())
    t = await a.collect(stop_after_deltas=1)
    await b.send({"type": "resume", "message_id": t.start["message_id"]})
    await b.expect("start")
    server.signal(signal.SIGTERM)
    r = await b.collect()
    assert r.done["status"] == "interrupted" and r.done["message_id"] == t.start["message_id"]
    assert await b.closed_code() == 1001
    server.wait(15)


@aio
async def test_history_without_a_conversation_id_uses_the_sockets_current_one(server):
    c = await Client.open(server)
    try:
        await c.send({"type": "history"})
        err = await c.expect_error("invalid")
        assert "conversation" in err["detail"]
        t = await c.complete("where am I")
        await c.send({"type": "history"})
        h = await c.expect("history")
        assert h["conversation_id"] == t.ack["conversation_id"]
        assert [m["id"] for m in h["messages"]] == [t.ack["message_id"], t.done["message_id"]]
    finally:
        await c.close()


@aio
async def test_a_follower_that_stops_reading_is_cut_off_without_slowing_the_reply(db, make_server):
    # A reply that waited for the stalled tab would wait SEND_TIMEOUT_S before it is cut off: longer
    # than each turn is given here.
    server = make_server(db, CHAT_SEND_TIMEOUT_S=8, CHAT_ECHO_DELAY_MS=0)
    a = await Client.open(server)
    # Another tab of the same user that never reads, with a tiny receive buffer: six ~1 MB replies
    # are more than the kernel's buffers hold for it (up to 4 MB), so the server's sends to it wait.
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", server.port))
    stalled = await connect(f"{server.ws_url}?sync=1&token={a.token}", sock=raw, max_size=None,
                            ping_interval=None, close_timeout=1, compression=None)
    assert json.loads(await stalled.recv())["type"] == "ready"
    try:
        for i in range(6):
            t = await a.turn(f"{i} " + "x " * 15_000, client_id=cid(), timeout=6)
            assert t.done["status"] == "complete" and len(t.deltas) > 15_000, "the replies went on"
        assert await poll(lambda: server.metric("chat_sockets_open"), lambda n: n == 1, timeout=30) == 1, \
            "the follower that stopped reading was cut off"
        await a.complete("and the reader goes on")
    finally:
        stalled.transport.abort()
        await a.close()
