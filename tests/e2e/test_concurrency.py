"""Many sockets at once: the pool is never held across a reply, and no row is lost or duplicated.

Replies that stream for longer than the pool timeout, through a pool much smaller than the number
of sockets, only all complete if a socket holds a connection at its commit points and not between.
Concurrent turns, in many conversations or in one conversation from two sockets, and the same
client_id raced on two sockets, must leave exactly the rows the protocol promises.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from support.client import Client, Rest, Turn, aio, cid, poll, words

ECHO = "You said: "
LONG_REPLY_WORDS = 60  # at 100 ms a delta: ~6 s of streaming, longer than the 5 s pool timeout
NOT_IN_LOG = ("database is locked", "Traceback")


async def open_many(server, n: int, **kw: Any) -> list[Client]:
    return list(await asyncio.gather(*(Client.open(server, **kw) for _ in range(n))))


async def close_all(clients: list[Client]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def send_at_once(clients: list[Client], contents: list[str]) -> None:
    await asyncio.gather(*(c.message(text, client_id=cid())
                           for c, text in zip(clients, contents, strict=True)))


async def read_turn(c: Client, timeout: float = 60, deltas: int | None = None) -> Turn:
    """Frames of one turn until done or any error (a reply that fails mid-stream ends with an
    error, not a done), or until `deltas` deltas have arrived."""
    turn = Turn()
    async with asyncio.timeout(timeout):
        while True:
            frame = await c.recv(timeout)
            turn.frames.append(frame)
            if frame["type"] in ("done", "error") or (deltas is not None and len(turn.deltas) >= deltas):
                return turn


async def scrape(server) -> dict[str, float]:
    """One /metrics sample, so values read together describe the same instant."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(server.base_url + "/metrics")).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def settles(server, name: str, value: float) -> bool:
    """The gauge reaches `value` (a reply leaves the in-flight set just after its done is sent)."""
    return await poll(lambda: server.metric(name), lambda v: v == value) == value


def assert_log_clean(server) -> None:
    log = server.log_text()
    for bad in NOT_IN_LOG:
        assert bad not in log, f"{bad!r} in the server log:\n{server.log_tail(60)}"


def assert_complete_echo(turn: Turn, content: str) -> None:
    assert turn.ack is not None and turn.ack["duplicate"] is False, turn.frames
    assert turn.start is not None and turn.start["reply_to"] == turn.ack["message_id"], turn.frames
    assert turn.done is not None and turn.done["status"] == "complete", turn.frames
    assert turn.done["message_id"] == turn.start["message_id"]
    assert turn.done["content"] == turn.text == ECHO + content
    assert len(turn.deltas) == len((ECHO + content).split())


def page_backwards(rest: Rest, conversation_id: str, limit: int) -> list[dict[str, Any]]:
    """The whole conversation read newest page first, `limit` at a time, put back in order."""
    pages: list[list[dict[str, Any]]] = []
    before = None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"before": before} if before else {})}
        r = rest.messages(conversation_id, **params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["messages"], body
        pages.insert(0, body["messages"])
        if not body["has_more"]:
            return [m for page in pages for m in page]
        before = body["messages"][0]["id"]


# -- the pool is not held while a reply streams --------------------------------------------------
def test_thirty_long_replies_at_once_through_a_pool_of_two(db, make_server):
    server = make_server(db, CHAT_DB_POOL_SIZE=2, CHAT_DB_POOL_TIMEOUT_S=5, CHAT_ECHO_DELAY_MS=100)
    asyncio.run(thirty_long_replies(server))
    assert_log_clean(server)


async def thirty_long_replies(server) -> None:
    clients = await open_many(server, 30)
    try:
        contents = [f"socket {i} " + words(LONG_REPLY_WORDS - 2) for i in range(30)]
        await send_at_once(clients, contents)
        turns = await asyncio.gather(*(read_turn(c) for c in clients))
        for turn, text in zip(turns, contents, strict=True):
            assert turn.error is None, turn.frames  # `unavailable` here: a socket held a connection
            assert_complete_echo(turn, text)
        assert server.metric("chat_turns_total", 'status="complete"') == 30
        assert await settles(server, "chat_db_pool_checked_out", 0)
    finally:
        await close_all(clients)


def test_no_connection_is_checked_out_while_twenty_replies_stream(db, make_server):
    server = make_server(db, CHAT_DB_POOL_SIZE=2, CHAT_DB_POOL_TIMEOUT_S=5, CHAT_ECHO_DELAY_MS=100)
    asyncio.run(twenty_replies_streaming(server))
    assert_log_clean(server)


async def twenty_replies_streaming(server) -> None:
    clients = await open_many(server, 20)
    try:
        contents = [f"socket {i} " + words(LONG_REPLY_WORDS - 2) for i in range(20)]
        await send_at_once(clients, contents)
        heads = await asyncio.gather(*(read_turn(c, deltas=1) for c in clients))
        for head in heads:
            assert head.done is None and len(head.deltas) == 1, head.frames

        for _ in range(5):
            sample = await scrape(server)
            # From one scrape: all 20 replies are in flight at that instant and none holds a connection.
            seen = (sample.get("chat_replies_in_flight"), sample.get("chat_db_pool_checked_out"))
            assert seen == (20, 0), f"(replies in flight, connections checked out) = {seen}"
            await asyncio.sleep(0.1)

        tails = await asyncio.gather(*(read_turn(c) for c in clients))
        for head, tail, text in zip(heads, tails, contents, strict=True):
            assert_complete_echo(Turn(head.frames + tail.frames), text)
        assert await settles(server, "chat_replies_in_flight", 0)
    finally:
        await close_all(clients)


# -- no row lost or duplicated -----------------------------------------------------------------------
def test_fifty_sockets_ten_turns_each_store_every_row_once(db, make_server):
    server = make_server(db)
    asyncio.run(fifty_sockets_ten_turns(server))
    assert_log_clean(server)


async def fifty_sockets_ten_turns(server) -> None:
    completed_before = server.metric("chat_turns_total", 'status="complete"')
    clients = await open_many(server, 50)

    async def ten_turns(i: int, c: Client) -> list[tuple[str, str, Turn]]:
        sent = []
        for j in range(10):
            text, key = f"user {i} message {j} " + words(3, tag=f"u{i}m{j}x"), cid(f"u{i}m{j}")
            sent.append((text, key, await c.complete(text, client_id=key)))
        return sent

    try:
        results = await asyncio.gather(*(ten_turns(i, c) for i, c in enumerate(clients)))
    finally:
        await close_all(clients)

    all_ids: list[str] = []
    for c, sent in zip(clients, results, strict=True):
        rest = Rest(server, c.token)
        items = rest.conversations()
        assert len(items) == 1, items
        stored = rest.all_messages(items[0]["id"])
        assert len(stored) == 20, stored
        assert [m["role"] for m in stored] == ["user", "assistant"] * 10
        users, replies = stored[0::2], stored[1::2]
        assert [m["content"] for m in users] == [text for text, _, _ in sent]
        assert [m["client_id"] for m in users] == [key for _, key, _ in sent]
        assert [m["id"] for m in users] == [t.ack["message_id"] for _, _, t in sent]
        assert [m["id"] for m in replies] == [t.done["message_id"] for _, _, t in sent]
        assert [r["reply_to"] for r in replies] == [u["id"] for u in users]
        assert [r["content"] for r in replies] == [ECHO + text for text, _, _ in sent]
        assert {m["status"] for m in stored} == {"complete"}
        all_ids += [m["id"] for m in stored]
    assert len(all_ids) == len(set(all_ids)) == 1000
    assert server.metric("chat_turns_total", 'status="complete"') - completed_before == 500


def test_two_sockets_of_one_user_write_one_conversation_at_once(db, make_server):
    server = make_server(db)
    asyncio.run(two_sockets_one_conversation(server))
    assert_log_clean(server)


async def two_sockets_one_conversation(server) -> None:
    a = await Client.open(server)
    b = await Client.open(server, token=a.token)
    try:
        assert b.user_id == a.user_id
        first = await a.complete("a 0 opens the conversation", client_id=cid("a0"))
        conv = first.ack["conversation_id"]

        async def send(c: Client, tag: str, texts: list[str]) -> list[Turn]:
            return [await c.complete(text, client_id=cid(tag), conversation_id=conv) for text in texts]

        a_texts = [f"a {j} " + words(2, tag=f"a{j}x") for j in range(1, 10)]
        b_texts = [f"b {j} " + words(2, tag=f"b{j}x") for j in range(10)]
        a_turns, b_turns = await asyncio.gather(send(a, "a", a_texts), send(b, "b", b_texts))
        a_turns, a_texts = [first, *a_turns], ["a 0 opens the conversation", *a_texts]
        for t in a_turns + b_turns:
            assert t.ack["conversation_id"] == conv

        rest = Rest(server, a.token)
        assert [i["id"] for i in rest.conversations()] == [conv]
        stored = rest.every_message(conv)  # the whole tree, oldest first
        assert len(stored) == 40
        ids = [m["id"] for m in stored]
        assert len(set(ids)) == 40
        position = {m["id"]: i for i, m in enumerate(stored)}

        users = [m for m in stored if m["role"] == "user"]
        assert sorted(m["content"] for m in users) == sorted(a_texts + b_texts)
        replies = [m for m in stored if m["role"] == "assistant"]
        assert sorted(r["reply_to"] for r in replies) == sorted(u["id"] for u in users)  # one reply each
        by_id = {m["id"]: m for m in stored}
        for r in replies:
            asked = by_id[r["reply_to"]]
            assert asked["role"] == "user" and position[asked["id"]] < position[r["id"]]
            assert r["status"] == "complete" and r["content"] == ECHO + asked["content"]
            assert r["parent_id"] == asked["id"]

        # Each socket sent its next message only after the previous reply was done, so on each
        # socket's own thread: message, its reply, next message, ... in stored order.
        for turns, texts in ((a_turns, a_texts), (b_turns, b_texts)):
            thread = [i for t in turns for i in (t.ack["message_id"], t.done["message_id"])]
            assert [position[i] for i in thread] == sorted(position[i] for i in thread)
            assert [by_id[t.ack["message_id"]]["content"] for t in turns] == texts

        # On a tree (docs/protocol.md, "Branches"): each message followed the leaf as it was when
        # it was stored, so nothing is orphaned: one root, every parent stored before its child,
        # and the leaf a stored message; a reply stored after the other socket's next message
        # hangs off the current branch, beside it.
        tree = rest.tree(conv)
        assert [m["id"] for m in stored if m["parent_id"] is None] == [first.ack["message_id"]]
        assert all(position[m["parent_id"]] < position[m["id"]] for m in stored if m["parent_id"] is not None)
        assert tree["leaf_id"] in position
        branch = rest.all_messages(conv)
        assert branch[-1]["id"] == tree["leaf_id"]
        assert [m["id"] for m in branch] == [m["id"] for m in page_backwards(rest, conv, limit=7)]
        assert all(b["parent_id"] == a["id"] for a, b in zip(branch, branch[1:], strict=False))
        h = await b.history(conv, limit=200)
        assert [m["id"] for m in h["messages"]] == [m["id"] for m in branch] and h["has_more"] is False
    finally:
        await close_all([a, b])


# -- the same client_id on two sockets at the same instant ---------------------------------------------
async def race_one_client_id(server, content: str) -> None:
    """Two sockets of one user send the same client_id at once: one message, one reply."""
    a = await Client.open(server)
    b = await Client.open(server, token=a.token)
    try:
        key = cid("race")
        await asyncio.gather(a.message(content, client_id=key), b.message(content, client_id=key))
        turns = await asyncio.gather(read_turn(a), read_turn(b))
    finally:
        await close_all([a, b])

    for t in turns:
        assert t.ack is not None and t.ack["client_id"] == key, t.frames
        assert t.done is not None and t.done["status"] == "complete", t.frames
        assert t.error is None, t.frames
    assert sorted(t.ack["duplicate"] for t in turns) == [False, True]
    assert turns[0].ack["message_id"] == turns[1].ack["message_id"]
    assert turns[0].done["message_id"] == turns[1].done["message_id"]
    assert turns[0].done["content"] == turns[1].done["content"] == ECHO + content
    # One reply was generated: the duplicate read it, or streamed that same reply (from seq 1).
    streamed = [t for t in turns if t.start is not None]
    assert {t.start["message_id"] for t in streamed} == {turns[0].done["message_id"]}, [t.frames for t in turns]
    assert all(t.text == ECHO + content for t in streamed)

    rest = Rest(server, a.token)
    items = rest.conversations()
    assert len(items) == 1, items
    stored = rest.all_messages(items[0]["id"])
    assert [(m["role"], m["id"], m["status"]) for m in stored] == [
        ("user", turns[0].ack["message_id"], "complete"),
        ("assistant", turns[0].done["message_id"], "complete")]
    assert stored[0]["client_id"] == key and stored[1]["reply_to"] == stored[0]["id"]


@aio
async def test_same_client_id_on_two_sockets_at_once_is_stored_once(db, slow_server):
    # A reply of ~1 s at 50 ms a delta: the duplicate arrives while it streams and must wait for it.
    await race_one_client_id(slow_server, "the same message twice " + words(16))


@aio
async def test_ten_client_id_races_at_once_each_store_one_turn(db, server):
    await asyncio.gather(*(race_one_client_id(server, f"race {i} " + words(4)) for i in range(10)))
