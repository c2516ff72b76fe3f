"""The client's branch frames against a scripted chat.v1 server: what edit, regenerate and select
put on the wire, and what a regenerate sends again after a drop (resume when its reply is listed
in flight, else the regenerate with the same client_id, whose ack names the user message).
No chat-server process: fast and exact."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from test_client_protocol import READY, TEXT, WORDS, Peer, Script
from websockets.asyncio.server import ServerConnection, serve

from server.client import ChatClient, Event, Message

REGEN_ACK = {"type": "ack", "client_id": "g1", "conversation_id": "c1", "message_id": "m1", "regenerate": True,
             "duplicate": False}
START = {"type": "start", "conversation_id": "c1", "message_id": "r2", "reply_to": "m1"}
DONE = {"type": "done", "conversation_id": "c1", "message_id": "r2", "reply_to": "m1", "status": "complete",
        "content": TEXT}
REGENERATE = {"type": "regenerate", "reply_to": "m1", "client_id": "g1"}


async def run(scripts: list[Script], action: Callable[[ChatClient], Awaitable[Any]], **client: Any,
              ) -> tuple[Any, list[dict[str, Any]]]:
    """Serve one script per connection; what `action` returns, and the frames the client sent."""
    received: list[dict[str, Any]] = []
    connections = iter(scripts)

    async def handler(ws: ServerConnection) -> None:
        await next(connections)(Peer(ws, received))
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = list(server.sockets)[0].getsockname()[1]
        async with ChatClient(f"ws://127.0.0.1:{port}/ws", backoff=0.01, timeout=10, **client) as chat:
            return await action(chat), received


async def regenerate(chat: ChatClient) -> tuple[list[str], Any]:
    stream = chat.regenerate_stream("m1", client_id="g1")
    pieces = [piece async for piece in stream]
    return pieces, stream.reply


async def cut_after(peer: Peer, seqs: list[int]) -> None:
    await peer.send(**READY, replies_in_flight=[])
    assert await peer.recv() == REGENERATE
    await peer.send(**REGEN_ACK)
    await peer.send(**START)
    await peer.deltas(seqs, message_id="r2")
    await asyncio.sleep(0.05)
    peer.drop()


def test_a_regenerate_in_flight_after_a_drop_is_resumed_from_the_last_seq():
    async def second(peer: Peer) -> None:
        await peer.send(**READY, replies_in_flight=[
            {"conversation_id": "c1", "message_id": "r2", "reply_to": "m1", "seq": 4}])
        assert await peer.recv() == {"type": "resume", "message_id": "r2", "after": 3}
        await peer.send(**START)
        await peer.deltas([3, 4, 5, 6, 7], message_id="r2")  # 3 again: dropped by seq
        await peer.send(**DONE)

    (pieces, reply), received = asyncio.run(run([lambda p: cut_after(p, [1, 2, 3]), second], regenerate))
    assert pieces == WORDS and (reply.message_id, reply.reply_to, reply.client_id) == ("r2", "m1", "g1")
    assert [f["type"] for f in received] == ["regenerate", "resume"]


def test_a_regenerate_whose_reply_was_stored_meanwhile_is_sent_again_and_answered_by_done_alone():
    async def second(peer: Peer) -> None:
        await peer.send(**READY, replies_in_flight=[])
        assert await peer.recv() == REGENERATE  # the same frame, the same client_id
        await peer.send(**{**REGEN_ACK, "duplicate": True})
        await peer.send(**DONE)

    (pieces, reply), received = asyncio.run(run([lambda p: cut_after(p, [1, 2]), second], regenerate))
    assert "".join(pieces) == TEXT and pieces[:2] == WORDS[:2] and reply.status == "complete"
    assert reply.reply_to == "m1" and received == [REGENERATE, REGENERATE]


def test_a_regenerate_whose_ack_was_lost_is_sent_again_and_its_reply_followed_from_the_start():
    async def first(peer: Peer) -> None:
        await peer.send(**READY, replies_in_flight=[])
        await peer.recv()
        peer.drop()  # claimed or not, the client cannot tell: no ack came

    async def second(peer: Peer) -> None:
        await peer.send(**READY, replies_in_flight=[
            {"conversation_id": "c1", "message_id": "r2", "reply_to": "m1", "seq": 2}])
        assert await peer.recv() == REGENERATE  # not acknowledged: sent again, not resumed
        await peer.send(**{**REGEN_ACK, "duplicate": True})
        await peer.send(**START)
        await peer.deltas([1, 2, 3, 4, 5, 6, 7], message_id="r2")
        await peer.send(**DONE)

    (pieces, reply), received = asyncio.run(run([first, second], regenerate))
    assert pieces == WORDS and reply.message_id == "r2" and received == [REGENERATE, REGENERATE]


def test_edit_puts_the_parent_on_the_wire_and_select_returns_the_leaf():
    async def only(peer: Peer) -> None:
        await peer.send(**{**READY, "conversation_id": "c1", "replies_in_flight": []})
        for parent, cid in (("a1", "e1"), (None, "e2")):
            frame = await peer.recv()
            assert frame["parent_id"] == parent and frame["client_id"] == cid, frame
            # Under a named parent the server takes the parent's conversation; a new root needs one.
            assert frame.get("conversation_id") == (None if parent else "c1"), frame
            await peer.send(type="ack", client_id=cid, conversation_id="c1", message_id=f"u-{cid}",
                            parent_id=parent, duplicate=False)
            await peer.send(**{**START, "message_id": f"r-{cid}", "reply_to": f"u-{cid}"})
            await peer.send(**{**DONE, "message_id": f"r-{cid}", "reply_to": f"u-{cid}"})
        assert await peer.recv() == {"type": "select", "conversation_id": "c1", "message_id": "m1"}
        await peer.send(type="selected", conversation_id="c9", leaf_id="x9")  # another tab's: an event
        await peer.send(type="selected", conversation_id="c1", leaf_id="r9")

    async def action(chat: ChatClient) -> tuple[Any, ...]:
        sibling = await chat.edit(Message("m2", "user", "old", "complete", parent_id="a1"), "new", client_id="e1")
        root = await chat.edit(Message("m1", "user", "old", "complete"), "new root", client_id="e2")
        leaf = await chat.select("m1")
        event = await asyncio.wait_for(anext(aiter(chat.events())), 5)
        return sibling, root, leaf, event

    (sibling, root, leaf, event), _ = asyncio.run(run([only], action, sync=True))
    assert (sibling.reply_to, root.reply_to, leaf) == ("u-e1", "u-e2", "r9")
    assert isinstance(event, Event) and (event.type, event.conversation_id, event.leaf_id) == ("selected", "c9", "x9")
