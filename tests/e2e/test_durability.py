"""Durability: acknowledged messages survive kill -9, SIGTERM stores replies as interrupted and closes
with 1001, a database outage after the ack ends the turn with `unavailable`, and tokens outlive restarts.

Every test here owns its server (make_server), since it kills, signals or restarts it.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import httpx
from support.client import Client, Rest, cid, poll, words
from support.servers import ServerProcess, pg_execute
from websockets.exceptions import ConnectionClosed

from server.client import ChatClient

ECHO = "You said: "


async def read_until_closed(c: Client, timeout: float = 20) -> tuple[list[dict[str, Any]], int | None]:
    """Every frame up to the server's close, and the close code."""
    frames: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                frames.append(json.loads(await c.ws.recv()))
    except ConnectionClosed as e:
        return frames, (e.rcvd.code if e.rcvd else None)


async def read_until_turn_ends(c: Client, timeout: float = 30) -> list[dict[str, Any]]:
    """Frames up to and including the first `done` or `error` (even one after `start`)."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while frames == [] or frames[-1]["type"] not in ("done", "error"):
            frames.append(await c.recv())
    return frames


def rows(messages: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(m["role"], m["content"], m["status"]) for m in messages]


def readyz(server: ServerProcess) -> int:
    try:
        return httpx.get(server.base_url + "/readyz", timeout=10).status_code
    except httpx.HTTPError:
        return 0


def check_fresh_reply(turn_frames: list[dict[str, Any]], ack: dict[str, Any], content: str) -> dict[str, Any]:
    """A duplicate ack with the original ids, then a newly generated complete reply; its done."""
    types = [f["type"] for f in turn_frames]
    assert types[:2] == ["ack", "start"] and types[-1] == "done" and set(types[2:-1]) == {"delta"}, types
    dup, start, done = turn_frames[0], turn_frames[1], turn_frames[-1]
    assert dup["duplicate"] is True and dup["message_id"] == ack["message_id"], dup
    assert dup["conversation_id"] == ack["conversation_id"] and dup["client_id"] == ack["client_id"], dup
    assert start["reply_to"] == ack["message_id"] and done["message_id"] == start["message_id"]
    text = "".join(f["content"] for f in turn_frames if f["type"] == "delta")
    assert done["status"] == "complete" and done["content"] == text == ECHO + content, done
    return done


# -- kill -9 ---------------------------------------------------------------------------------------
def test_acked_message_survives_kill_9_and_its_resend_gets_a_fresh_reply(db, make_server):
    server = make_server(db, CHAT_ECHO_DELAY_MS=200)
    asyncio.run(kill_after_ack(server))


async def kill_after_ack(server: ServerProcess) -> None:
    c = await Client.open(server)
    token, user_id = c.token, c.user_id
    content, k = "remember this exactly: ünïcode, spaces  and all", cid()
    await c.message(content, client_id=k)
    ack = await c.expect("ack")
    assert ack["duplicate"] is False and ack["client_id"] == k
    server.kill()
    await c.close()

    server.restart()
    stored = Rest(server, token).all_messages(ack["conversation_id"])
    # The reply never ended: the restart stored it as interrupted, with what it had (nothing yet).
    assert stored[0]["id"] == ack["message_id"] and stored[0]["client_id"] == k
    assert rows(stored) == [("user", content, "complete"), ("assistant", "", "interrupted")]
    assert stored[1]["reply_to"] == ack["message_id"]

    c2 = await Client.open(server, token=token)
    try:
        assert c2.user_id == user_id
        await c2.message(content, client_id=k)
        done = check_fresh_reply(await read_until_turn_ends(c2), ack, content)
        # The current branch ends with the fresh reply; the interrupted one is its sibling.
        h = await c2.history(ack["conversation_id"])
        assert rows(h["messages"]) == [("user", content, "complete"), ("assistant", ECHO + content, "complete")]
        assert h["messages"][1]["id"] == done["message_id"] and h["leaf_id"] == done["message_id"]
        assert h["messages"][1]["reply_to"] == ack["message_id"]
        assert h["messages"][1]["siblings"] == [stored[1]["id"], done["message_id"]]
        assert rows(Rest(server, token).every_message(ack["conversation_id"])) == [
            ("user", content, "complete"), ("assistant", "", "interrupted"), ("assistant", ECHO + content, "complete")]
    finally:
        await c2.close()


def test_every_acked_message_survives_repeated_kills_at_different_moments(db, make_server):
    server = make_server(db, CHAT_ECHO_DELAY_MS=200)
    asyncio.run(repeated_kills(server))


async def repeated_kills(server: ServerProcess) -> None:
    first = await Client.open(server)
    token = first.token
    await first.close()
    conversation: str | None = None
    acked: list[tuple[dict[str, Any], str]] = []  # (ack, content)
    for i, kill_after_deltas in enumerate([0, 1, 2, 3]):
        c = await Client.open(server, token=token)
        content = f"round {i} " + words(4, tag=f"r{i}-")
        extra = {} if conversation is None else {"conversation_id": conversation}
        await c.message(content, client_id=cid(f"k{i}"), **extra)
        ack = await c.expect("ack")
        conversation = ack["conversation_id"]
        acked.append((ack, content))
        if kill_after_deltas:
            turn = await c.collect(stop_after_deltas=kill_after_deltas)
            assert turn.done is None and len(turn.deltas) == kill_after_deltas, turn.frames
        server.kill()
        await c.close()
        server.restart()
        stored = Rest(server, token).every_message(conversation)
        # Every message acknowledged so far, exactly as sent, and the start after each kill stored
        # the reply that died with it as interrupted, with no more than the client had seen.
        users = [m for m in stored if m["role"] == "user"]
        assert [(m["id"], m["client_id"], m["content"], m["status"]) for m in users] == [
            (a["message_id"], a["client_id"], text, "complete") for a, text in acked]
        replies = {m["reply_to"]: m for m in stored if m["role"] == "assistant"}
        assert set(replies) == {a["message_id"] for a, _ in acked} and len(stored) == 2 * len(acked)
        for ack, text in acked:
            assert replies[ack["message_id"]]["status"] == "interrupted"
            assert (ECHO + text).startswith(replies[ack["message_id"]]["content"])

    async def resend(ack: dict[str, Any], content: str) -> dict[str, Any]:
        c = await Client.open(server, token=token)
        try:
            await c.message(content, client_id=ack["client_id"])
            return check_fresh_reply(await read_until_turn_ends(c), ack, content)
        finally:
            await c.close()

    dones = await asyncio.gather(*(resend(a, text) for a, text in acked))
    stored = Rest(server, token).every_message(conversation)  # the whole tree: each fresh reply beside its first
    users = [m for m in stored if m["role"] == "user"]
    replies = {m["reply_to"]: m for m in stored if m["role"] == "assistant" and m["status"] == "complete"}
    assert [m["id"] for m in users] == [a["message_id"] for a, _ in acked] and len(stored) == 3 * len(acked)
    for (ack, text), done in zip(acked, dones, strict=True):
        reply = replies[ack["message_id"]]
        assert (reply["id"], reply["content"], reply["status"]) == (done["message_id"], ECHO + text, "complete")


def test_kill_9_mid_long_replies_keeps_the_text_their_checkpoints_wrote(db, make_server):
    server = make_server(db, CHAT_ECHO_DELAY_MS=40, CHAT_REPLY_CHECKPOINT_S=0.2)
    asyncio.run(kill_mid_long_replies(server))


async def kill_mid_long_replies(server: ServerProcess) -> None:
    # Three users' replies stream at once: each round writes every one of them that is due.
    clients = [await Client.open(server) for _ in range(3)]
    contents = [words(60, tag=f"u{i}-") for i in range(len(clients))]
    acks = []
    for c, content in zip(clients, contents, strict=True):
        await c.message(content, client_id=cid())
        acks.append(await c.expect("ack"))
    # 30 deltas at 40 ms: 1.2 s of streaming, several rounds of 0.2 s.
    seen = [await c.collect(stop_after_deltas=30) for c in clients]
    server.kill()
    for c in clients:
        await c.close()

    server.restart()
    for c, ack, content, turn in zip(clients, acks, contents, seen, strict=True):
        stored = Rest(server, c.token).every_message(ack["conversation_id"])
        assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "interrupted")]
        text = stored[1]["content"]
        # What a checkpoint wrote: the start of the reply, more than its first round could have
        # missed, and never more than the reply.
        assert (ECHO + content).startswith(text), text
        assert len(text.split()) >= 10, f"the checkpoints kept {text!r} of {len(turn.deltas)} deltas seen"


# -- SIGTERM ---------------------------------------------------------------------------------------
def test_sigterm_mid_reply_stores_replies_interrupted_and_closes_1001(db, make_server):
    server = make_server(db, CHAT_ECHO_DELAY_MS=200)
    asyncio.run(sigterm_mid_reply(server))


async def sigterm_mid_reply(server: ServerProcess) -> None:
    clients = [await Client.open(server) for _ in range(3)]
    contents = [f"long message {i} " + words(30, tag=f"s{i}-") for i in range(3)]
    for c, content in zip(clients, contents, strict=True):
        await c.message(content, client_id=cid())
    turns = await asyncio.gather(*(c.collect(stop_after_deltas=2) for c in clients))
    for t in turns:
        assert t.ack is not None and t.start is not None and len(t.deltas) == 2, t.frames

    readers = [asyncio.ensure_future(read_until_closed(c)) for c in clients]
    server.signal(signal.SIGTERM)
    ended = await asyncio.gather(*readers)
    server.wait(10)  # the contract's deadline for exiting; TimeoutExpired fails the test

    received = []
    for t, (frames, code) in zip(turns, ended, strict=True):
        assert code == 1001, (code, frames)
        # The socket still followed its reply: it is told the reply stopped, then closed.
        assert {f["type"] for f in frames[:-1]} <= {"delta"} and frames[-1]["type"] == "done", frames
        assert frames[-1]["status"] == "interrupted"
        received.append(t.text + "".join(f["content"] for f in frames[:-1]))
        assert frames[-1]["content"] == received[-1]

    server.restart()
    for c, t, content, got in zip(clients, turns, contents, received, strict=True):
        stored = Rest(server, c.token).all_messages(t.ack["conversation_id"])
        assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "interrupted")]
        user, reply = stored
        assert user["id"] == t.ack["message_id"] and user["content"] == content
        assert reply["id"] == t.start["message_id"] and reply["reply_to"] == user["id"]
        full = ECHO + content
        assert reply["content"] and full.startswith(reply["content"]) and len(reply["content"]) < len(full)
        assert reply["content"].startswith(got), (reply["content"], got)


def test_sigterm_with_idle_sockets_closes_them_1001_and_exits(db, make_server):
    server = make_server(db)
    asyncio.run(sigterm_idle(server))


async def sigterm_idle(server: ServerProcess) -> None:
    busy_before, fresh = await Client.open(server), await Client.open(server)
    await busy_before.complete("a finished turn")
    server.signal(signal.SIGTERM)
    codes = await asyncio.gather(busy_before.closed_code(), fresh.closed_code())
    assert codes == [1001, 1001]
    server.wait(10)


# -- the database fails after the ack -----------------------------------------------------------------
def test_database_outage_after_ack_ends_turn_unavailable_and_resend_completes_it(make_server):
    server = make_server("postgres", CHAT_ECHO_DELAY_MS=100)
    asyncio.run(outage_after_ack(server))


async def outage_after_ack(server: ServerProcess) -> None:
    name = server.db_url.rsplit("/", 1)[1]
    c = await Client.open(server)
    try:
        first, k1 = "before the outage " + words(20), cid("k1")
        refused, k2 = "during the outage", cid("k2")
        await c.message(first, client_id=k1)
        ack1 = await c.expect("ack")
        try:
            await asyncio.to_thread(pg_execute, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await asyncio.to_thread(pg_execute, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()")
            frames = await read_until_turn_ends(c)
            assert frames[0]["type"] == "start" and frames[-1]["type"] == "error", frames
            assert frames[-1]["code"] == "unavailable" and frames[-1]["client_id"] == k1, frames[-1]
            assert frames[-1]["detail"].strip()

            await c.message(refused, client_id=k2)
            err = await c.expect_error("unavailable")
            assert err["client_id"] == k2
            assert await poll(lambda: readyz(server), lambda s: s == 503) == 503
        finally:
            await asyncio.to_thread(pg_execute, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert await poll(lambda: readyz(server), lambda s: s == 200, timeout=30) == 200

        await c.message(first, client_id=k1)
        check_fresh_reply(await read_until_turn_ends(c), ack1, first)
        t2 = await c.complete(refused, client_id=k2)
        assert t2.ack["duplicate"] is False and t2.done["content"] == ECHO + refused
        stored = Rest(server, c.token).all_messages(ack1["conversation_id"])
        assert rows(stored) == [("user", first, "complete"), ("assistant", ECHO + first, "complete"),
                                ("user", refused, "complete"), ("assistant", ECHO + refused, "complete")]
        assert [m["client_id"] for m in stored] == [k1, None, k2, None]
    finally:
        await c.close()


# -- identity across restarts ------------------------------------------------------------------------
def test_open_mode_token_still_works_after_a_restart(db, make_server):
    server = make_server(db)
    asyncio.run(token_after_restart(server))


async def token_after_restart(server: ServerProcess) -> None:
    async with ChatClient(server.ws_url) as chat:
        token, user_id = chat.token, chat.user_id
        convs = [(await chat.send(f"conversation {i}", conversation_id=None)).conversation_id for i in range(2)]

    server.restart()
    async with ChatClient(server.ws_url, token=token) as again:
        # Recognised (with a fresh token: open mode hands one out in every ready), not a new user.
        assert again.user_id == user_id and again.ready.get("token")
        assert {i["id"] for i in Rest(server, token).conversations()} == set(convs)
        assert (await again.send("still me", conversation_id=convs[0])).conversation_id == convs[0]
