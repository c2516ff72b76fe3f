"""Abuse limits over a real socket: the per-user message rate (rate_limited, then 1008 for a socket
that ignores it), sockets per user (1013), frames per second (1008), frame size (1009, also for a
deflate bomb whose compressed frame is small), and invalid UTF-8 (1007).

The limits are in-process bookkeeping, so most tests run on SQLite only; the rate tests, which also
check what is stored, run on both databases. Each limit is made small on a server of its own
(shared by the tests of this module), so that the default servers are not disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from support.client import Client, Refused, Rest, aio, cid
from websockets.exceptions import ConnectionClosed

RATE = 5  # CHAT_RATE_LIMIT_PER_MINUTE of the rate server
FLOOD = 5  # CHAT_FLOOD_CLOSE_AFTER of the rate server
SOCKETS = 3  # CHAT_MAX_SOCKETS_PER_USER of the small server
FRAMES_PER_S = 20  # CHAT_MAX_FRAMES_PER_SECOND of the small server (burst twice that)
SMALL_CHARS = 50  # CHAT_MAX_MESSAGE_CHARS of the small server
SMALL_FRAME_LIMIT = 12 * SMALL_CHARS + 4096


@pytest.fixture
def rate_server(db, session_servers):
    return session_servers(db, CHAT_RATE_LIMIT_PER_MINUTE=RATE, CHAT_FLOOD_CLOSE_AFTER=FLOOD)


@pytest.fixture
def small_server(session_servers):
    return session_servers("sqlite", CHAT_MAX_SOCKETS_PER_USER=SOCKETS, CHAT_MAX_FRAMES_PER_SECOND=FRAMES_PER_S,
                           CHAT_MAX_MESSAGE_CHARS=SMALL_CHARS)


@pytest.fixture
def sqlite_server(session_servers):
    """The shared default server on SQLite."""
    return session_servers("sqlite")


@pytest.fixture
def deflate_server(session_servers):
    """A SQLite server that accepts permessage-deflate (off by default)."""
    return session_servers("sqlite", CHAT_WS_PER_MESSAGE_DEFLATE="true")


# -- helpers ---------------------------------------------------------------------------------------------
def stored(server: Any, token: str) -> list[tuple[str, str, str | None]]:
    """(role, content, client_id) of every message of this user, oldest conversation's first."""
    rest = Rest(server, token)
    try:
        return [(m["role"], m["content"], m["client_id"])
                for conv in reversed(rest.conversations()) for m in rest.all_messages(conv["id"])]
    finally:
        rest.http.close()


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def read_until_closed(c: Client, timeout: float = 20) -> tuple[list[dict[str, Any]], int | None]:
    """Every frame until the server closes the socket, and the close code."""
    frames: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                frames.append(await c.recv(timeout))
    except ConnectionClosed as e:
        return frames, e.rcvd.code if e.rcvd else None


async def send_until_closed(c: Client, frames: list[Any]) -> None:
    for frame in frames:
        try:
            await c.send(frame)
        except ConnectionClosed:
            return


async def assert_serves_a_turn(server: Any) -> None:
    c = await Client.open(server)
    try:
        await c.complete("still serving")
    finally:
        await c.close()


# -- message rate ----------------------------------------------------------------------------------------
@aio
async def test_message_over_the_rate_gets_rate_limited_with_its_client_id_and_is_not_stored(rate_server):
    c = await Client.open(rate_server)
    try:
        keys = [cid("r") for _ in range(RATE + 1)]
        for i, k in enumerate(keys):  # all at once: the refusal cannot depend on how fast turns run
            await c.message(f"message {i}", client_id=k)
        frames: list[dict[str, Any]] = []
        while sum(f["type"] == "done" for f in frames) < RATE or not any(f["type"] == "error" for f in frames):
            frames.append(await c.recv())
        errors = [f for f in frames if f["type"] == "error"]
        assert [(e["code"], e.get("client_id")) for e in errors] == [("rate_limited", keys[-1])], errors
        assert [f["client_id"] for f in frames if f["type"] == "ack"] == keys[:RATE]
        assert all(f["status"] == "complete" for f in frames if f["type"] == "done")
        assert [(role, k) for role, _, k in stored(rate_server, c.token) if role == "user"] == [
            ("user", k) for k in keys[:RATE]]
        # The limit is the user's, not the socket's: a second socket of the same user is limited too.
        other_socket = await Client.open(rate_server, token=c.token)
        try:
            k = cid("r")
            t = await other_socket.turn("from the second socket", client_id=k)
            assert t.types() == ["error"] and t.error["code"] == "rate_limited" and t.error["client_id"] == k
        finally:
            await other_socket.close()
        assert len(stored(rate_server, c.token)) == 2 * RATE
        await assert_serves_a_turn(rate_server)  # another user is not limited
    finally:
        await c.close()


@aio
async def test_socket_that_ignores_rate_limited_is_closed_1008_while_others_go_on(rate_server):
    flooder = await Client.open(rate_server)
    other = await Client.open(rate_server)
    keys = [cid("f") for _ in range(RATE + FLOOD + 10)]

    async def flood() -> tuple[list[dict[str, Any]], int | None]:
        await send_until_closed(flooder, [{"type": "message", "content": f"flood {i}", "client_id": k}
                                          for i, k in enumerate(keys)])
        return await read_until_closed(flooder)

    async def behave() -> list[str]:
        return [(await other.complete(f"polite {i}")).done["status"] for i in range(3)]

    try:
        (frames, code), statuses = await asyncio.gather(flood(), behave())
        assert code == 1008, frames
        errors = [f for f in frames if f["type"] == "error"]
        assert [(f["code"], f["client_id"]) for f in errors] == [("rate_limited", k) for k in keys[RATE:RATE + FLOOD]]
        assert statuses == ["complete"] * 3
        # Acked ones are stored; none past the rate is (one taken just before the close may be stored unacked).
        kept = [k for role, _, k in stored(rate_server, flooder.token) if role == "user"]
        acked = [f["client_id"] for f in frames if f["type"] == "ack"]
        assert kept[:len(acked)] == acked and set(kept) <= set(keys[:RATE]), (kept, acked)
        await other.complete("after the flood")
    finally:
        await flooder.close()
        await other.close()


@aio
async def test_default_rate_lets_a_user_send_thirty_messages_in_a_minute(server):
    c = await Client.open(server)
    try:
        for i in range(30):
            t = await c.turn(f"number {i}")
            assert t.done is not None and t.done["status"] == "complete", (i, t.frames)
        assert len(stored(server, c.token)) == 60
    finally:
        await c.close()


# -- sockets per user --------------------------------------------------------------------------------------
@aio
async def test_sockets_over_the_per_user_cap_close_1013_before_any_frame(small_server):
    first = await Client.open(small_server)
    token = first.token
    sockets = [first] + [await Client.open(small_server, token=token) for _ in range(SOCKETS - 1)]
    try:
        with pytest.raises(Refused) as refused:
            await Client.open(small_server, token=token)
        assert (refused.value.how, refused.value.code) == ("close", 1013)  # closed, no ready first
        neighbour = await Client.open(small_server)  # another user is not capped by this one
        await neighbour.close()
        await sockets[-1].complete("the open ones still work")

        await sockets.pop().close()

        async def attempt() -> Client | None:
            try:
                return await Client.open(small_server, token=token)
            except Refused as e:
                assert e.code == 1013
                return None

        replacement = None
        for _ in range(100):  # the server counts the closed one off asynchronously
            replacement = await attempt()
            if replacement is not None:
                break
            await asyncio.sleep(0.1)
        assert replacement is not None, "no socket accepted after one of the user's sockets closed"
        sockets.append(replacement)
        assert replacement.user_id == first.user_id
        with pytest.raises(Refused) as refused:  # the refused attempts did not use up places
            await Client.open(small_server, token=token)
        assert refused.value.code == 1013
    finally:
        for s in sockets:
            await s.close()


# -- frames per second ----------------------------------------------------------------------------------------
@aio
async def test_frame_flood_closes_1008_but_a_burst_within_the_limit_does_not(small_server):
    c = await Client.open(small_server)
    try:
        for _ in range(FRAMES_PER_S):  # half the burst
            await c.send({"type": "cancel"})
        h = await c.history(cid())
        assert h["type"] == "error" and h["code"] == "not_found", h  # still open and answering
        await send_until_closed(c, [{"type": "cancel"}] * 200)
        frames, code = await read_until_closed(c)
        assert code == 1008, frames
    finally:
        await c.close()
    again = await Client.open(small_server, token=c.token)  # the limit was the socket's
    try:
        await again.complete("calm again")
    finally:
        await again.close()


# -- frame size ---------------------------------------------------------------------------------------------
@aio
async def test_frame_at_the_size_limit_is_too_large_and_one_byte_more_closes_1009(small_server):
    c = await Client.open(small_server, compression=None)
    head = '{"type":"message","content":"'
    try:
        at_limit = head + "x" * (SMALL_FRAME_LIMIT - len(head) - 2) + '"}'
        assert len(at_limit.encode()) == SMALL_FRAME_LIMIT
        await c.send(at_limit)
        await c.expect_error("too_large")
        over = head + "x" * (SMALL_FRAME_LIMIT + 1 - len(head) - 2) + '"}'
        await c.send(over)
        assert await c.closed_code() == 1009
    finally:
        await c.close()
    assert stored(small_server, c.token) == []


@aio
async def test_compression_is_negotiated_only_when_the_setting_allows_it(sqlite_server, deflate_server):
    for server, negotiated in ((sqlite_server, False), (deflate_server, True)):
        c = await Client.open(server)  # websockets offers permessage-deflate, as browsers do
        try:
            assert bool(c.ws.protocol.extensions) is negotiated, (server.env, c.ws.protocol.extensions)
            t = await c.complete("compressed or not, the same turn")
            assert t.done["content"] == "You said: compressed or not, the same turn"
        finally:
            await c.close()


@pytest.mark.parametrize("fragmented", [False, True], ids=["one frame", "fragments"])
@aio
async def test_deflate_bomb_closes_1009_without_inflating_it(deflate_server, fragmented):
    server = deflate_server
    c = await Client.open(server)  # permessage-deflate, as websockets offers by default
    assert c.ws.protocol.extensions, "permessage-deflate was not negotiated"
    inflated = 50 * 1024 * 1024
    head = '{"type":"message","content":"'
    if fragmented:
        piece = " " * (256 * 1024)
        bomb: Any = [head, *[piece] * (inflated // len(piece)), '"}']
    else:
        bomb = head + " " * inflated + '"}'
    rss_before = rss_kb(server.pid)
    with contextlib.suppress(ConnectionClosed):
        await c.send(bomb)
    code = await c.closed_code()
    rss_after = rss_kb(server.pid)
    print(f"deflate bomb ({'fragments' if fragmented else 'one frame'}, {inflated} bytes inflated): "
          f"server VmRSS {rss_before} kB before, {rss_after} kB after, close {code}")
    assert code == 1009
    assert rss_after - rss_before < 50 * 1024, (rss_before, rss_after)
    assert server.proc is not None and server.proc.poll() is None
    assert stored(server, c.token) == []
    await assert_serves_a_turn(server)


# -- invalid UTF-8 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fragments", [
    [b'{"type":"message","content":"caf\xc3\x28"}'],
    [b'{"type":"message","content":"caf\xc3', b'\x28 au lait"}'],
    [b"plain text ", b"\xed\xa0\x80"],
], ids=["one frame", "split across fragments", "surrogate in last fragment"])
@aio
async def test_invalid_utf8_closes_1007_and_the_server_goes_on(sqlite_server, fragments):
    c = await Client.open(sqlite_server)
    with contextlib.suppress(ConnectionClosed):
        await c.ws.send(fragments[0] if len(fragments) == 1 else fragments, text=True)
    assert await c.closed_code() == 1007
    assert stored(sqlite_server, c.token) == []
    again = await Client.open(sqlite_server, token=c.token)
    try:
        await again.complete("valid UTF-8 again")
    finally:
        await again.close()
