"""The client's recovery rules against a scripted chat.v1 server: which frames it sends after a
drop, and that every piece of text reaches the reader exactly once (seq dedupe, resume `after`,
a server without seq, a regenerated reply, a gap). No chat-server process: fast and exact."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from server.client import ChatClient, Refused

WORDS = ["You ", "said: ", "a ", "b ", "c ", "d ", "e"]
TEXT = "".join(WORDS)
Script = Callable[["Peer"], Awaitable[None]]


class Peer:
    """One connection of the scripted server, and what the client sent on it."""

    def __init__(self, ws: ServerConnection, received: list[dict[str, Any]]) -> None:
        self.ws, self.received = ws, received

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        self.received.append(frame)
        return frame

    async def deltas(self, seqs: list[int], message_id: str = "r1", with_seq: bool = True) -> None:
        """The pieces of WORDS with these seqs (1-based), each with its seq unless with_seq is False."""
        for n in seqs:
            frame: dict[str, Any] = {"type": "delta", "message_id": message_id, "content": WORDS[n - 1]}
            if with_seq:
                frame["seq"] = n
            await self.ws.send(json.dumps(frame))

    def drop(self) -> None:
        self.ws.transport.abort()  # as a network would: no close frame


async def run(scripts: list[Script], **client: Any) -> tuple[list[str], Any, list[dict[str, Any]]]:
    """Serve one script per connection; the pieces and Reply of one stream(), and the client's frames."""
    received: list[dict[str, Any]] = []
    connections = iter(scripts)

    async def handler(ws: ServerConnection) -> None:
        await next(connections)(Peer(ws, received))
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = list(server.sockets)[0].getsockname()[1]
        async with ChatClient(f"ws://127.0.0.1:{port}/ws", backoff=0.01, timeout=10, **client) as chat:
            stream = chat.stream("a b c d e", client_id="k1")
            pieces = [piece async for piece in stream]
            return pieces, stream.reply, received


READY = {"type": "ready", "protocol": "chat.v1", "user_id": "u1", "conversation_id": None, "token": "t1"}
ACK = {"type": "ack", "client_id": "k1", "conversation_id": "c1", "message_id": "m1", "duplicate": False}
START = {"type": "start", "conversation_id": "c1", "message_id": "r1", "reply_to": "m1"}
DONE = {"type": "done", "conversation_id": "c1", "message_id": "r1", "status": "complete", "content": TEXT}


async def first_connection(peer: Peer, seqs: list[int], ready: dict[str, Any] = READY, with_seq: bool = True) -> None:
    await peer.send(**ready)
    assert (await peer.recv())["type"] == "message"
    await peer.send(**ACK)
    await peer.send(**START)
    await peer.deltas(seqs, with_seq=with_seq)
    await asyncio.sleep(0.05)
    peer.drop()


def test_a_reply_in_flight_is_resumed_after_the_last_seq_and_replays_are_dropped():
    async def second(peer: Peer) -> None:
        await peer.send(**READY, replies_in_flight=[
            {"conversation_id": "c1", "message_id": "r1", "reply_to": "m1", "seq": 5}])
        resume = await peer.recv()
        assert resume == {"type": "resume", "message_id": "r1", "after": 3}, resume
        await peer.send(**START)
        await peer.deltas([2, 3, 4, 5, 6, 7])  # 2 and 3 again: dropped by seq
        await peer.send(**DONE)

    first = lambda peer: first_connection(peer, [1, 2, 3], {**READY, "replies_in_flight": []})  # noqa: E731
    pieces, reply, received = asyncio.run(run([first, second]))
    assert pieces == WORDS and reply.content == TEXT and reply.message_id == "r1" and reply.reply_to == "m1"
    assert [f["type"] for f in received] == ["message", "resume"]


def test_a_server_without_seq_or_resume_gets_the_client_id_again_and_the_rest_comes_from_done():
    async def second(peer: Peer) -> None:
        await peer.send(**READY)  # no replies_in_flight: a server that predates resume
        message = await peer.recv()
        assert (message["type"], message["client_id"], message["content"]) == ("message", "k1", "a b c d e")
        await peer.send(**{**ACK, "duplicate": True})
        await peer.send(**DONE)  # the stored reply: done alone

    first = lambda peer: first_connection(peer, [1, 2, 3], with_seq=False)  # noqa: E731
    pieces, reply, received = asyncio.run(run([first, second]))
    assert "".join(pieces) == TEXT and pieces[:3] == WORDS[:3] and reply.status == "complete"
    assert [f["client_id"] for f in received] == ["k1", "k1"]


def test_a_regenerated_reply_gives_only_the_text_beyond_what_was_given():
    async def second(peer: Peer) -> None:
        await peer.send(**READY, replies_in_flight=[])  # the reply died with the old process
        assert (await peer.recv())["client_id"] == "k1"
        await peer.send(**{**ACK, "duplicate": True})
        await peer.send(**{**START, "message_id": "r2"})
        await peer.deltas([1, 2, 3, 4, 5, 6, 7], message_id="r2")
        await peer.send(**{**DONE, "message_id": "r2"})

    first = lambda peer: first_connection(peer, [1, 2, 3, 4], {**READY, "replies_in_flight": []})  # noqa: E731
    pieces, reply, _ = asyncio.run(run([first, second]))
    assert pieces == WORDS and reply.message_id == "r2" and reply.reply_to == "m1"


def test_a_gap_in_seq_is_not_papered_over():
    async def only(peer: Peer) -> None:
        await peer.send(**READY, replies_in_flight=[])
        await peer.recv()
        await peer.send(**ACK)
        await peer.send(**START)
        await peer.deltas([1, 2, 4, 5])  # 3 never came: what follows waits for done's content
        await peer.send(**DONE)

    pieces, reply, _ = asyncio.run(run([only]))
    assert pieces[:2] == WORDS[:2] and "".join(pieces) == TEXT == reply.content


def test_a_followed_reply_that_died_is_generated_again():
    async def second(peer: Peer) -> None:
        await peer.send(**READY, replies_in_flight=[
            {"conversation_id": "c1", "message_id": "r1", "reply_to": "m1", "seq": 2}])
        assert await peer.recv() == {"type": "resume", "message_id": "r1", "after": 2}
        await peer.send(**START)
        await peer.send(**{**DONE, "status": "interrupted", "content": "".join(WORDS[:2])})  # its process died
        resend = await peer.recv()
        assert (resend["type"], resend["client_id"]) == ("message", "k1")
        await peer.send(**{**ACK, "duplicate": True})
        await peer.send(**{**START, "message_id": "r2"})
        await peer.deltas([1, 2, 3, 4, 5, 6, 7], message_id="r2")
        await peer.send(**{**DONE, "message_id": "r2"})

    first = lambda peer: first_connection(peer, [1, 2], {**READY, "replies_in_flight": []})  # noqa: E731
    pieces, reply, _ = asyncio.run(run([first, second]))
    assert pieces == WORDS and (reply.message_id, reply.status, reply.content) == ("r2", "complete", TEXT)


def test_a_message_whose_ack_was_lost_is_sent_again_with_its_client_id():
    async def first(peer: Peer) -> None:
        await peer.send(**READY, replies_in_flight=[])
        await peer.recv()
        peer.drop()  # stored or not, the client cannot tell: no ack came

    async def second(peer: Peer) -> None:
        await peer.send(**READY, replies_in_flight=[])
        resend = await peer.recv()
        assert (resend["type"], resend["client_id"], resend["content"]) == ("message", "k1", "a b c d e")
        await peer.send(**{**ACK, "duplicate": True})
        await peer.send(**DONE)

    pieces, reply, received = asyncio.run(run([first, second]))
    assert pieces == [TEXT] and reply.reply_to == "m1" and [f["client_id"] for f in received] == ["k1", "k1"]


def test_a_close_1008_before_ready_is_a_refusal_naming_the_reason():
    async def refuse(peer: Peer) -> None:
        await peer.ws.close(1008, "origin not allowed")

    async def main() -> None:
        async with serve(lambda ws: refuse(Peer(ws, [])), "127.0.0.1", 0) as server:
            port = list(server.sockets)[0].getsockname()[1]
            with pytest.raises(Refused) as refused:
                async with ChatClient(f"ws://127.0.0.1:{port}/ws"):
                    pass
            assert refused.value.close_code == 1008 and "origin not allowed" in str(refused.value)

    asyncio.run(main())


def test_a_close_1008_mid_reply_fails_the_wait_instead_of_reconnecting():
    async def only(peer: Peer) -> None:
        await peer.send(**READY, replies_in_flight=[])
        await peer.recv()
        await peer.send(**ACK)
        await peer.ws.close(1008, "token expired")

    with pytest.raises(Refused) as refused:
        asyncio.run(run([only]))
    assert refused.value.close_code == 1008 and "token expired" in str(refused.value)
