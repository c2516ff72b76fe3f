"""How turns flow on a socket: cancel, disconnect, the queue and `busy`, idempotent resends,
which conversation a message goes to, wscat-style text frames, and a client that stops reading.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from support.client import Client, Rest, Turn, aio, cid, poll, words
from websockets.asyncio.client import connect


def echo(content: str) -> str:
    return f"You said: {content}"


def rows(messages: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(m["role"], m["content"], m["status"]) for m in messages]


async def assert_silent(c: Client, seconds: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        frame = await c.recv(timeout=seconds)
        pytest.fail(f"expected no frame, got {frame}")


async def stored_reply(rest: Rest, conversation_id: str, count: int) -> list[dict[str, Any]]:
    """The conversation's messages once it holds `count` of them (the reply got stored)."""
    messages = await poll(lambda: rest.all_messages(conversation_id), lambda ms: len(ms) >= count, timeout=20)
    assert len(messages) == count, messages
    return messages


async def cancel_after(c: Client, deltas: int) -> Turn:
    """Collect a turn's first `deltas` deltas, send cancel, and collect the rest of the turn."""
    turn = await c.collect(stop_after_deltas=deltas)
    assert turn.done is None, turn.frames
    await c.send({"type": "cancel"})
    rest = await c.collect()
    turn.frames.extend(rest.frames)
    return turn


# -- cancel ----------------------------------------------------------------------------------------
@aio
async def test_cancel_mid_stream_stores_partial_reply_and_socket_goes_on(slow_server):
    c = await Client.open(slow_server)
    try:
        long = words(60)
        await c.message(long, client_id=cid())
        t = await cancel_after(c, 2)
        assert t.done["status"] == "cancelled"
        assert t.done["content"] == t.text
        assert echo(long).startswith(t.text) and t.text != echo(long)
        conv = t.ack["conversation_id"]
        h = await c.history(conv)
        assert rows(h["messages"]) == [("user", long, "complete"), ("assistant", t.text, "cancelled")]
        assert h["messages"][1]["id"] == t.done["message_id"]

        after = await c.complete("after the cancel")
        assert after.ack["conversation_id"] == conv
        h2 = await c.history(conv)
        assert h2["messages"][:2] == h["messages"]  # append-only: the cancelled turn is untouched
        assert rows(h2["messages"][2:]) == [("user", "after the cancel", "complete"),
                                            ("assistant", echo("after the cancel"), "complete")]
    finally:
        await c.close()


@aio
async def test_cancel_in_the_same_burst_as_the_message_ends_the_turn_consistently(slow_server):
    c = await Client.open(slow_server)
    try:
        content = words(30)
        await c.message(content)
        await c.send({"type": "cancel"})
        t = await c.collect()
        assert t.done is not None, t.frames
        assert t.done["status"] in ("cancelled", "complete")
        assert t.done["content"] == t.text and echo(content).startswith(t.text)
        if t.done["status"] == "complete":
            assert t.text == echo(content)
        h = await c.history(t.ack["conversation_id"])
        assert rows(h["messages"]) == [("user", content, "complete"),
                                       ("assistant", t.done["content"], t.done["status"])]
        assert h["messages"][1]["id"] == t.done["message_id"]
    finally:
        await c.close()


@aio
async def test_cancel_when_idle_gets_no_answer(server):
    c = await Client.open(server)
    try:
        await c.send({"type": "cancel"})
        await assert_silent(c)
        first = await c.complete("first")
        await c.send({"type": "cancel"})
        await assert_silent(c)
        second = await c.complete("second")
        assert second.ack["conversation_id"] == first.ack["conversation_id"]
    finally:
        await c.close()


@aio
async def test_cancel_stops_only_the_current_turn_not_the_waiting_ones(slow_server):
    c = await Client.open(slow_server)
    try:
        keys = [cid() for _ in range(4)]
        contents = [words(40), "one", "two", "three"]
        for k, content in zip(keys, contents, strict=True):
            await c.message(content, client_id=k)
        first = await cancel_after(c, 2)
        assert first.ack["client_id"] == keys[0] and first.done["status"] == "cancelled"
        for k, content in zip(keys[1:], contents[1:], strict=True):
            t = await c.collect()
            assert t.ack["client_id"] == k, t.frames
            assert t.done["status"] == "complete" and t.done["content"] == echo(content)
        h = await c.history(first.ack["conversation_id"])
        assert [m["status"] for m in h["messages"] if m["role"] == "assistant"] == [
            "cancelled", "complete", "complete", "complete"]
    finally:
        await c.close()


# -- disconnect (replies that go on without their socket: test_replies_outlive_socket.py) -----------
@pytest.fixture
def stopping_server(db, session_servers):
    """Replies stop with their socket (no detached time), echo pausing 50 ms before each delta."""
    return session_servers(db, CHAT_ECHO_DELAY_MS=50, CHAT_DETACHED_REPLY_S=0)


@aio
async def test_with_no_detached_time_a_disconnect_mid_reply_stores_it_interrupted(stopping_server):
    c = await Client.open(stopping_server)
    long = words(100)
    await c.message(long, client_id=cid())
    t = await c.collect(stop_after_deltas=2)
    await c.close()
    messages = await stored_reply(Rest(stopping_server, c.token), t.ack["conversation_id"], 2)
    reply = messages[1]
    assert reply["role"] == "assistant" and reply["status"] == "interrupted"
    assert reply["id"] == t.start["message_id"] and reply["reply_to"] == t.ack["message_id"]
    assert reply["content"].startswith(t.text)
    assert echo(long).startswith(reply["content"]) and reply["content"] != echo(long)


# -- the queue -------------------------------------------------------------------------------------
@aio
async def test_messages_sent_at_once_run_one_turn_at_a_time_in_order(server):
    c = await Client.open(server)
    try:
        keys = [cid() for _ in range(5)]
        for i, k in enumerate(keys):
            await c.message(words(5, tag=f"q{i}-"), client_id=k)
        frames: list[dict[str, Any]] = []
        while sum(f["type"] == "done" for f in frames) < 5:
            frames.append(await c.recv())
        for i, k in enumerate(keys):
            ack, start = frames[0], frames[1]
            assert ack["type"] == "ack" and ack["client_id"] == k, frames
            assert start["type"] == "start" and start["reply_to"] == ack["message_id"], frames
            end = next(j for j, f in enumerate(frames) if f["type"] != "delta" and j > 1)
            deltas, done = frames[2:end], frames[end]
            assert deltas and all(d["message_id"] == start["message_id"] for d in deltas), frames
            assert done["type"] == "done" and done["message_id"] == start["message_id"], frames
            assert done["content"] == echo(words(5, tag=f"q{i}-")) == "".join(d["content"] for d in deltas)
            frames = frames[end + 1:]
        assert frames == []
    finally:
        await c.close()


@pytest.fixture
def small_queue_server(db, make_server):
    """Three may wait behind the turn in progress; 100 ms per delta keeps that turn going."""
    return make_server(db, CHAT_ECHO_DELAY_MS=100, CHAT_MAX_WAITING=3)


@aio
async def test_messages_beyond_the_waiting_limit_get_busy_and_are_not_stored(small_queue_server):
    srv = small_queue_server
    c = await Client.open(srv)
    try:
        keys = [cid() for _ in range(7)]
        contents = [words(12, tag="long")] + [f"queued {i}" for i in range(1, 7)]
        for k, content in zip(keys, contents, strict=True):
            await c.message(content, client_id=k)
        acks, dones, busy = [], [], []
        while len(busy) < 3 or len(dones) < 4:
            frame = await c.recv()
            if frame["type"] == "ack":
                acks.append(frame)
            elif frame["type"] == "done":
                dones.append(frame)
            elif frame["type"] == "error":
                assert frame["code"] == "busy" and frame["detail"].strip(), frame
                busy.append(frame["client_id"])
        assert [a["client_id"] for a in acks] == keys[:4]
        assert busy == keys[4:]
        assert [(d["status"], d["content"]) for d in dones] == [("complete", echo(x)) for x in contents[:4]]

        rest = Rest(srv, c.token)
        conversations = rest.conversations()
        assert len(conversations) == 1
        stored = rest.all_messages(conversations[0]["id"])
        assert [m["content"] for m in stored if m["role"] == "user"] == contents[:4]
        assert [m["client_id"] for m in stored if m["role"] == "user"] == keys[:4]

        again = await c.complete(contents[4], client_id=keys[4])
        assert again.ack["duplicate"] is False and again.done["content"] == echo(contents[4])
    finally:
        await c.close()


# -- idempotency -----------------------------------------------------------------------------------
@aio
async def test_resend_of_a_completed_turn_returns_the_stored_reply_without_generating(server):
    c = await Client.open(server)
    try:
        k = cid()
        original = await c.complete("remember me", client_id=k)
        conv = original.ack["conversation_id"]

        resends = ({"content": "remember me"}, {"content": "something else", "conversation_id": None})
        for fields in resends:
            await c.send({"type": "message", "client_id": k, **fields})
            t = await c.collect()
            assert t.types() == ["ack", "done"], t.frames
            assert t.ack["duplicate"] is True and t.ack["client_id"] == k
            assert t.ack["message_id"] == original.ack["message_id"] and t.ack["conversation_id"] == conv
            assert t.done == original.done

        rest = Rest(server, c.token)
        assert [i["id"] for i in rest.conversations()] == [conv]
        assert rows(rest.all_messages(conv)) == [("user", "remember me", "complete"),
                                                ("assistant", echo("remember me"), "complete")]
    finally:
        await c.close()


@aio
async def test_resend_from_another_socket_while_streaming_streams_the_same_reply(slow_server):
    c1 = await Client.open(slow_server)
    c2 = await Client.open(slow_server, token=c1.token)
    try:
        k, long = cid(), words(40)
        await c1.message(long, client_id=k)
        first = await c1.collect(stop_after_deltas=1)
        await c2.message("ignored content", client_id=k)
        dup = await c2.collect()
        first.frames.extend((await c1.collect()).frames)
        assert first.done["status"] == "complete" and first.done["content"] == echo(long)
        assert dup.types()[:2] == ["ack", "start"] and dup.start == first.start, dup.frames
        assert [d["seq"] for d in dup.deltas] == list(range(1, len(dup.deltas) + 1))
        assert dup.text == dup.done["content"]
        assert dup.ack["duplicate"] is True and dup.ack["message_id"] == first.ack["message_id"]
        assert dup.done["message_id"] == first.done["message_id"]
        assert dup.done["content"] == first.done["content"] and dup.done["status"] == "complete"
        messages = Rest(slow_server, c1.token).all_messages(first.ack["conversation_id"])
        assert rows(messages) == [("user", long, "complete"), ("assistant", echo(long), "complete")]
    finally:
        await c1.close()
        await c2.close()


@aio
async def test_resend_after_an_interrupted_reply_generates_a_fresh_one(stopping_server):
    slow_server = stopping_server
    c1 = await Client.open(slow_server)
    k, long = cid(), words(30)
    await c1.message(long, client_id=k)
    cut = await c1.collect(stop_after_deltas=2)
    await c1.close()
    conv = cut.ack["conversation_id"]
    rest = Rest(slow_server, c1.token)
    interrupted = (await stored_reply(rest, conv, 2))[1]
    assert interrupted["status"] == "interrupted"

    c2 = await Client.open(slow_server, token=c1.token)
    try:
        fresh = await c2.turn(long, client_id=k)
        assert fresh.types()[:2] == ["ack", "start"] and fresh.deltas, fresh.frames
        assert fresh.ack["duplicate"] is True and fresh.ack["message_id"] == cut.ack["message_id"]
        assert fresh.start["reply_to"] == cut.ack["message_id"]
        assert fresh.done["status"] == "complete" and fresh.done["content"] == fresh.text == echo(long)
        assert fresh.done["message_id"] != interrupted["id"]
        # Stored beside the interrupted one, as its sibling; the current branch ends with it.
        messages = rest.every_message(conv)
        assert {k: v for k, v in messages[1].items() if k != "siblings"} == \
            {k: v for k, v in interrupted.items() if k != "siblings"}
        assert rows(messages) == [("user", long, "complete"),
                                  ("assistant", interrupted["content"], "interrupted"),
                                  ("assistant", echo(long), "complete")]
        assert [m["reply_to"] for m in messages[1:]] == [cut.ack["message_id"]] * 2
        branch = rest.all_messages(conv)
        assert [m["id"] for m in branch] == [cut.ack["message_id"], fresh.done["message_id"]]
        assert branch[1]["siblings"] == [interrupted["id"], fresh.done["message_id"]]

        again = await c2.turn("whatever", client_id=k)
        assert again.types() == ["ack", "done"], again.frames
        assert again.ack["duplicate"] is True and again.done == fresh.done
        assert len(rest.every_message(conv)) == 3
    finally:
        await c2.close()


@aio
async def test_client_id_is_per_user(server):
    a = await Client.open(server)
    b = await Client.open(server)
    try:
        k = cid()
        ta = await a.complete("from a", client_id=k)
        tb = await b.complete("from b", client_id=k)
        assert tb.ack["duplicate"] is False and tb.ack["client_id"] == k
        assert tb.ack["message_id"] != ta.ack["message_id"]
        assert tb.done["content"] == echo("from b")
    finally:
        await a.close()
        await b.close()


# -- conversations ---------------------------------------------------------------------------------
@aio
async def test_which_conversation_a_message_goes_to(server):
    c = await Client.open(server)
    try:
        a = (await c.complete("first")).ack["conversation_id"]
        b = (await c.complete("second", conversation_id=None)).ack["conversation_id"]
        assert b != a
        assert (await c.complete("third")).ack["conversation_id"] == b
        assert (await c.complete("fourth", conversation_id=a)).ack["conversation_id"] == a
        assert (await c.complete("fifth")).ack["conversation_id"] == a
        rest = Rest(server, c.token)
        users = {conv: [m["content"] for m in rest.all_messages(conv) if m["role"] == "user"]
                 for conv in (a, b)}
        assert users == {a: ["first", "fourth", "fifth"], b: ["second", "third"]}
    finally:
        await c.close()


@aio
async def test_connecting_with_an_own_conversation_makes_it_current(server):
    c = await Client.open(server)
    try:
        conv = (await c.complete("hello")).ack["conversation_id"]
    finally:
        await c.close()
    c2 = await Client.open(server, token=c.token, conversation_id=conv)
    try:
        assert c2.ready["conversation_id"] == conv
        assert (await c2.complete("again")).ack["conversation_id"] == conv
    finally:
        await c2.close()


@aio
async def test_connecting_with_a_foreign_or_unknown_conversation_gets_not_found(server):
    other = await Client.open(server)
    me = await Client.open(server)
    try:
        foreign = (await other.complete("not yours")).ack["conversation_id"]
        for requested in (foreign, "00000000-0000-4000-8000-000000000000"):
            c = await Client.open(server, token=me.token, conversation_id=requested)
            try:
                assert c.ready["conversation_id"] is None
                await c.expect_error("not_found")
                t = await c.complete("mine")
                assert t.ack["conversation_id"] != requested
            finally:
                await c.close()
        assert rows(Rest(server, other.token).all_messages(foreign)) == [
            ("user", "not yours", "complete"), ("assistant", echo("not yours"), "complete")]
    finally:
        await other.close()
        await me.close()


@aio
async def test_after_deleting_the_current_conversation_a_message_starts_a_new_one(server):
    c = await Client.open(server)
    try:
        old = (await c.complete("soon gone")).ack["conversation_id"]
        rest = Rest(server, c.token)
        assert rest.delete(old).status_code == 204
        t = await c.complete("still here")
        new = t.ack["conversation_id"]
        assert new != old
        assert [i["id"] for i in rest.conversations()] == [new]
        assert rows(rest.all_messages(new)) == [("user", "still here", "complete"),
                                                ("assistant", echo("still here"), "complete")]
    finally:
        await c.close()


# -- text frames -----------------------------------------------------------------------------------
@aio
async def test_plain_text_frames_are_messages(server):
    c = await Client.open(server)
    try:
        sent = ["hello from wscat", ' \n\t {"type": "message", "content": "json after blanks"}', "[1, 2]"]
        expected = ["hello from wscat", "json after blanks", "[1, 2]"]
        for frame, content in zip(sent, expected, strict=True):
            await c.send(frame)
            t = await c.collect()
            assert t.ack is not None and t.ack["client_id"] is None, t.frames
            assert t.done["status"] == "complete" and t.done["content"] == echo(content)
        h = await c.history(t.ack["conversation_id"])
        assert [m["content"] for m in h["messages"] if m["role"] == "user"] == expected
    finally:
        await c.close()


# -- a client that stops reading -------------------------------------------------------------------
def big_content(i: int) -> str:
    # One-letter words: ~15,000 deltas, so each reply is ~1 MB on the wire, and 9 of them are
    # more than the kernel's socket buffers (up to 4 MB) can absorb.
    return f"message{i} " + "x " * 14_990


@pytest.fixture
def impatient_server(db, make_server):
    # No detached time: the reply the client was cut off from stops with it.
    return make_server(db, CHAT_SEND_TIMEOUT_S=1, CHAT_ECHO_DELAY_MS=0, CHAT_DETACHED_REPLY_S=0)


async def ask_for_more_than_the_buffers_hold(srv):  # type: ignore[no-untyped-def]
    """A socket with a tiny receive buffer that sends nine messages whose replies are ~1 MB each:
    the server's sends soon wait on the transport. Returns the socket, its ready frame and the
    contents sent."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", srv.port))
    # No permessage-deflate: compressed, the repetitive deltas would be too small to fill the buffers.
    ws = await connect(srv.ws_url, sock=s, max_size=None, ping_interval=None, close_timeout=1, compression=None)
    ready = json.loads(await asyncio.wait_for(ws.recv(), 15))
    assert ready["type"] == "ready"
    contents = [big_content(i) for i in range(9)]
    for content in contents:
        await ws.send(json.dumps({"type": "message", "content": content}))
    return ws, ready, contents


@aio
async def test_a_client_that_stops_reading_is_cut_off_and_each_message_it_sent_has_a_stored_reply(
        impatient_server):
    srv = impatient_server
    ws, ready, contents = await ask_for_more_than_the_buffers_hold(srv)
    try:
        # From here on the client reads nothing; only the server can end this.
        open_sockets = await poll(lambda: srv.metric("chat_sockets_open"), lambda n: n == 0,
                                  timeout=30, interval=0.25)
        assert open_sockets == 0, "the server never dropped a client that stopped reading"
    finally:
        ws.transport.abort()

    rest = Rest(srv, ready["token"])
    conversations = rest.conversations()
    assert len(conversations) == 1
    messages = rest.all_messages(conversations[0]["id"])
    users = [m for m in messages if m["role"] == "user"]
    replies = {m["reply_to"]: m for m in messages if m["role"] == "assistant"}
    assert [m["content"] for m in users] == contents[:len(users)]
    # The reply never waits for its reader, so it may well be complete by the time the reader is
    # cut off; the one still streaming then stops with it (no detached time here): interrupted.
    for m in users:
        reply = replies.get(m["id"])
        assert reply is not None, f"user message {m['id']} was stored without a reply"
        if reply["status"] == "complete":
            assert reply["content"] == echo(m["content"])
        else:
            assert reply["status"] == "interrupted" and echo(m["content"]).startswith(reply["content"])

    fresh = await Client.open(srv)
    try:
        await fresh.complete("are you still there")
    finally:
        await fresh.close()


@pytest.fixture
def sqlite_server(session_servers):
    return session_servers("sqlite")


@aio
async def test_a_client_that_pauses_reading_gets_every_reply_once_it_reads_again(sqlite_server):
    # The same volume as above fills the buffers, so the server waits for the transport to drain
    # (uvicorn's pause_writing); reading again must wake every waiting send (resume_writing).
    ws, ready, contents = await ask_for_more_than_the_buffers_hold(sqlite_server)
    try:
        await asyncio.sleep(2)  # well under CHAT_SEND_TIMEOUT_S (10 s)
        client = Client(ws, ready)
        for content in contents:
            turn = await client.collect(timeout=60)
            assert turn.done is not None and turn.done["status"] == "complete", turn.types()[-3:]
            assert turn.done["content"] == turn.text == echo(content)
    finally:
        ws.transport.abort()
