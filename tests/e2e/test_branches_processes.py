"""Branches across processes: two real chat-server processes on one PostgreSQL database are one
server for select, regenerate and the leaf a message follows. PostgreSQL only: SQLite serves one
process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.client import Client, Rest, Turn, aio, cid, words

pytestmark = [pytest.mark.postgres]

ECHO = "You said: "




def regenerate_frame(reply_to: str, client_id: str | None = None) -> dict[str, Any]:
    frame = {"type": "regenerate", "reply_to": reply_to}
    if client_id is not None:
        frame["client_id"] = client_id
    return frame


def tree_of(rest: Rest, conversation_id: str) -> dict[str, Any]:
    r = rest.http.get(f"/api/conversations/{conversation_id}/tree")
    assert r.status_code == 200, r.text
    return r.json()


def assistants(tree: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in tree["items"] if i["role"] == "assistant"]


def about(frame: dict[str, Any]) -> str | None:
    """The message a sync frame is about: message_added's message, a reply's id."""
    return frame["message"]["id"] if frame["type"] == "message_added" else frame.get("message_id")


async def fresh_frame(tab: Client, earlier: set[str], timeout: float = 10) -> dict[str, Any]:
    """The next frame on a sync socket that is not about the `earlier` messages: a turn that ended
    on the other process just before the socket opened can still be announced to it (the
    cross-process announcement is asynchronous), and such late frames are skipped here."""
    while True:
        frame = await tab.recv(timeout)
        if about(frame) not in earlier:
            return frame


async def fresh_turn(tab: Client, earlier: set[str]) -> Turn:
    turn = Turn()
    while turn.done is None:
        turn.frames.append(await fresh_frame(tab, earlier))
    return turn


def ids_of(*turns: Turn) -> set[str]:
    return {t.ack["message_id"] for t in turns} | {t.done["message_id"] for t in turns}


async def closing(*clients: Client) -> None:
    for c in clients:
        await c.close()


# -- select ----------------------------------------------------------------------------------------
@aio
async def test_a_select_on_one_process_reaches_a_sync_socket_on_the_other(pair):
    p1, p2 = pair()
    c1 = await Client.open(p1)
    try:
        t1 = await c1.complete("root", conversation_id=None)
        conv, r1 = t1.ack["conversation_id"], t1.done["message_id"]
        a = await c1.complete("branch A", conversation_id=conv)
        b = await c1.complete("branch B", conversation_id=conv, parent_id=r1)
        tab = await Client.open(p2, token=c1.token, sync=True)
        stranger = await Client.open(p2, sync=True)
        try:
            await c1.send({"type": "select", "conversation_id": conv, "message_id": a.ack["message_id"]})
            selected = await c1.expect("selected")
            assert selected == {"type": "selected", "conversation_id": conv, "leaf_id": a.done["message_id"]}
            earlier = ids_of(t1, a, b)
            assert await fresh_frame(tab, earlier) == selected
            # The leaf moved for both processes: P2's HTTP API and a message sent to P2 follow it.
            assert tree_of(Rest(p2, c1.token), conv)["leaf_id"] == a.done["message_id"]
            await c1.send({"type": "select", "conversation_id": conv, "message_id": b.ack["message_id"]})
            assert (await c1.expect("selected"))["leaf_id"] == b.done["message_id"]
            assert (await fresh_frame(tab, earlier))["leaf_id"] == b.done["message_id"]
            on_p2 = await Client.open(p2, token=c1.token)
            t = await on_p2.complete("after the select", conversation_id=conv)
            assert t.ack["parent_id"] == b.done["message_id"]
            await on_p2.close()
            with pytest.raises(TimeoutError):
                await stranger.recv(timeout=0.5)  # another user's sync socket hears nothing of it
        finally:
            await closing(tab, stranger)
    finally:
        await c1.close()


# -- regenerate --------------------------------------------------------------------------------------
@aio
async def test_one_regenerate_sent_to_both_processes_at_once_is_one_reply(pair):
    p1, p2 = pair(CHAT_ECHO_DELAY_MS=5)
    c1 = await Client.open(p1)
    c2 = await Client.open(p2, token=c1.token)
    rest = Rest(p1, c1.token)
    try:
        content = "regenerate me " + words(8)
        t = await c1.complete(content, conversation_id=None)
        conv, m1 = t.ack["conversation_id"], t.ack["message_id"]
        for i in range(6):
            before = len(assistants(tree_of(rest, conv)))
            k = cid(f"twice{i}")
            await asyncio.gather(c1.send(regenerate_frame(m1, k)), c2.send(regenerate_frame(m1, k)))
            t1, t2 = await asyncio.gather(c1.collect(), c2.collect())
            for x in (t1, t2):
                assert x.ack is not None and x.ack["regenerate"] is True, x.frames
                assert (x.ack["client_id"], x.ack["message_id"], x.ack["conversation_id"]) == (k, m1, conv)
                assert x.done is not None and x.done["status"] == "complete", x.frames
                assert x.done["content"] == ECHO + content and x.done["reply_to"] == m1
                if x.deltas:
                    assert x.text == x.done["content"]
            assert sorted([t1.ack["duplicate"], t2.ack["duplicate"]]) == [False, True], (t1.frames, t2.frames)
            assert t1.done["message_id"] == t2.done["message_id"]
            tree = tree_of(rest, conv)
            replies = assistants(tree)
            assert len(replies) == before + 1, replies
            assert replies[-1]["id"] == t1.done["message_id"] and replies[-1]["parent_id"] == m1
            assert tree["leaf_id"] == t1.done["message_id"]
        assert all(r["status"] == "complete" and r["reply_to"] == m1 for r in assistants(tree_of(rest, conv)))
    finally:
        await closing(c1, c2)


@aio
async def test_a_sync_socket_on_the_other_process_hears_a_regeneration_and_an_edit(pair):
    p1, p2 = pair(CHAT_ECHO_DELAY_MS=20)
    c1 = await Client.open(p1)
    try:
        content = "say it again " + words(10)
        t = await c1.complete(content, conversation_id=None)
        conv, m1, r1 = t.ack["conversation_id"], t.ack["message_id"], t.done["message_id"]
        tab = await Client.open(p2, token=c1.token, sync=True)
        try:
            await c1.send(regenerate_frame(m1, cid("regen")))
            mine = await c1.collect()
            heard = await fresh_turn(tab, ids_of(t))
            assert heard.types()[0] == "start" and "message_added" not in heard.types(), heard.types()
            assert heard.start == mine.start
            assert heard.start["reply_to"] == m1 and heard.start["conversation_id"] == conv
            assert heard.deltas and heard.text == heard.done["content"] == mine.done["content"]
            assert heard.done["message_id"] == mine.done["message_id"] != r1
            assert heard.done["status"] == "complete"

            # An edit on P1: message_added with its parent, then its reply.
            edit = await c1.complete("an edit", parent_id=None, conversation_id=conv)
            heard = await fresh_turn(tab, ids_of(t, mine))
            added = heard.first("message_added")
            assert heard.types()[0] == "message_added" and added["conversation_id"] == conv
            assert added["message"]["id"] == edit.ack["message_id"] and added["message"]["parent_id"] is None
            assert heard.done["message_id"] == edit.done["message_id"]
        finally:
            await tab.close()
    finally:
        await c1.close()


# -- two tabs, two processes, one conversation ----------------------------------------------------------
@aio
async def test_two_tabs_on_two_processes_sending_at_once_leave_one_chain(pair):
    p1, p2 = pair(CHAT_ECHO_DELAY_MS=3)
    c1 = await Client.open(p1)
    c2 = await Client.open(p2, token=c1.token)
    rest = Rest(p2, c1.token)
    try:
        t = await c1.complete("the start", conversation_id=None)
        conv = t.ack["conversation_id"]
        turns: list[Turn] = []
        for i in range(8):
            await asyncio.gather(c1.message(f"tab one {i} " + words(4), client_id=cid(), conversation_id=conv),
                                 c2.message(f"tab two {i} " + words(4), client_id=cid(), conversation_id=conv))
            done = await asyncio.gather(c1.collect(), c2.collect())
            for x in done:
                assert x.done is not None and x.done["status"] == "complete", x.frames
            turns.extend(done)
        tree = tree_of(rest, conv)
        items = tree["items"]
        stored = {i["id"]: i for i in items}
        assert len(items) == 2 + 2 * len(turns)
        for x in turns:  # what each socket was told is what is stored
            assert stored[x.ack["message_id"]]["parent_id"] == x.ack["parent_id"]
            assert stored[x.done["message_id"]]["parent_id"] == x.ack["message_id"]
        # Every parent is a message stored before its child: nothing orphaned; one root.
        seen: set[str] = set()
        for item in items:
            assert item["parent_id"] is None or item["parent_id"] in seen, item
            seen.add(item["id"])
        assert [i["id"] for i in items if i["parent_id"] is None] == [t.ack["message_id"]]
        assert tree["leaf_id"] in stored
        # Chained, never siblings by accident: no two user messages share a parent, and the
        # current path holds every user message, in the order they were stored.
        users = [i for i in items if i["role"] == "user"]
        assert len({u["parent_id"] for u in users}) == len(users)
        r = rest.messages(conv, limit=200)
        assert r.status_code == 200, r.text
        path = r.json()["messages"]
        assert [m["id"] for m in path if m["role"] == "user"] == [u["id"] for u in users]
        assert path[-1]["id"] == tree["leaf_id"] and path[-1]["role"] == "assistant"
    finally:
        await closing(c1, c2)
