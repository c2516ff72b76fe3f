"""One client must not hurt another (PROTOCOL.md, "Limits and close codes"): attacks from a raw
socket client (tests/support/raw_ws.py) that writes frames byte by byte and never reads, against a
real server process, while another user plays turns. Each test measures the other user's slowest
turn and the server's RSS growth, and asserts generous bounds: the point is "seconds and hundreds
of MB" before the fix against "milliseconds and a few MB" after, not tight timings.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx
import pytest
from support.client import Client, aio
from support.raw_ws import CONT, PING, TEXT, Attack, RawWebSocket, frame, rss_mb

ATTACK_S = 5.0
TURN_BOUND_S = 3.0  # the other user's slowest turn during an attack
RSS_BOUND_MB = 40.0  # the server's growth during an attack


@pytest.fixture
def fresh_server(make_server):
    """A server of the test's own, so that its RSS is the attack's alone."""
    return make_server("sqlite")


async def harm(server: Any, attacks: list[Attack], seconds: float = ATTACK_S) -> tuple[float, float]:
    """(the other user's slowest turn in s, the server's RSS growth in MB) while the attacks run."""
    victim = await Client.open(server)
    try:
        await victim.complete("warm up")
        base = peak = rss_mb(server.pid)
        for attack in attacks:
            attack.start()
        worst = 0.0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            await victim.complete("are you there")
            worst = max(worst, time.monotonic() - t0)
            peak = max(peak, rss_mb(server.pid))
            await asyncio.sleep(0.1)
        for attack in attacks:
            attack.stop()
        peak = max(peak, rss_mb(server.pid))
        print(f"other user's slowest turn {worst:.3f}s, server RSS {base:.0f} -> {peak:.0f} MB; "
              + ", ".join(f"{a.steps} steps over {a.connections} connections" for a in attacks))
        return worst, peak - base
    finally:
        await victim.close()


async def attacker_token(server: Any) -> str:
    c = await Client.open(server)
    await c.close()
    return c.token


# -- below the message layer ---------------------------------------------------------------------------
@aio
async def test_nonstop_empty_continuation_frames_cost_the_attacker_its_socket(fresh_server):
    token = await attacker_token(fresh_server)
    attack = Attack(fresh_server.port, lambda ws: ws.send(frame(CONT, b"", fin=False)), path=f"/ws?token={token}",
                    on_open=lambda ws: ws.send(frame(TEXT, b"x", fin=False)))
    worst, growth = await harm(fresh_server, [attack])
    assert worst < TURN_BOUND_S
    assert growth < RSS_BOUND_MB
    assert attack.connections > 1  # the server kept closing it


@aio
async def test_nonstop_pings_never_reading_the_pongs_cost_the_attacker_its_socket(fresh_server):
    token = await attacker_token(fresh_server)
    attack = Attack(fresh_server.port, lambda ws: ws.send(frame(PING, b"p" * 125)), path=f"/ws?token={token}")
    worst, growth = await harm(fresh_server, [attack])
    assert worst < TURN_BOUND_S
    assert growth < RSS_BOUND_MB
    assert attack.connections > 1


def test_continuation_ping_and_pong_frames_count_toward_the_frame_rate(fresh_server):
    ws = RawWebSocket(fresh_server.port)
    assert ws.status == 101
    assert ws.recv_frame()[0] == TEXT  # ready
    try:
        for _ in range(500):  # the default is 50 frames/s, bursts of 100
            ws.send(frame(PING, b"p"))
    except OSError:
        pass
    assert ws.close_code() == 1008


def test_a_message_in_more_than_64_fragments_closes_with_1008(fresh_server):
    ws = RawWebSocket(fresh_server.port)
    assert ws.recv_frame()[0] == TEXT  # ready
    ws.send(frame(TEXT, b"{", fin=False))
    for _ in range(64):  # 65 fragments in all, slowly enough for the frame rate
        ws.send(frame(CONT, b" ", fin=False))
        time.sleep(0.025)
    assert ws.close_code() == 1008


def test_a_message_in_64_fragments_is_read(fresh_server):
    ws = RawWebSocket(fresh_server.port)
    assert ws.recv_frame()[0] == TEXT  # ready
    parts = [b"h"] + [b"i"] * 62 + [b" there"]
    ws.send(frame(TEXT, parts[0], fin=False))
    for part in parts[1:-1]:
        ws.send(frame(CONT, part, fin=False))
        time.sleep(0.025)
    ws.send(frame(CONT, parts[-1], fin=True))
    opcode, payload = ws.recv_frame()
    assert opcode == TEXT and b'"ack"' in payload, payload


def test_a_client_that_never_reads_its_pongs_is_cut_off(make_server):
    # The frame rate out of the way, so that the pongs back up before it would close the socket.
    server = make_server("sqlite", CHAT_SEND_TIMEOUT_S=2, CHAT_MAX_FRAMES_PER_SECOND=1_000_000)
    base = rss_mb(server.pid)
    ws = RawWebSocket(server.port, rcvbuf=4096)
    ws.sock.settimeout(1)
    pings = frame(PING, b"p" * 125) * 100
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:  # never reading
            ws.send(pings)
    except OSError:
        pass
    assert time.monotonic() < deadline, "the server never cut the connection off"
    assert rss_mb(server.pid) - base < RSS_BOUND_MB
    with socket.socket() as probe:  # the server is fine
        probe.connect(("127.0.0.1", server.port))


# -- answers bigger than the request ---------------------------------------------------------------------
BIG = "\x01" * 32_000  # 192 KB on the wire: every character is escaped as \u0001
PAGE_BOUND = 1.5 * 2**20  # "about 1 MiB of message content" per page, plus the frame around it


async def big_conversation(server: Any, turns: int = 30) -> tuple[str, str]:
    """(token, conversation id) of a user whose conversation holds 2 × turns messages of 192 KB."""
    owner = await Client.open(server)
    first = await owner.complete(BIG)
    assert first.ack is not None
    conversation_id = first.ack["conversation_id"]
    for _ in range(turns - 1):
        await owner.complete(BIG)
    await owner.close()
    return owner.token, conversation_id


@aio
async def test_a_history_page_holds_about_1_mib_at_most_and_says_more_remain(fresh_server):
    token, conversation_id = await big_conversation(fresh_server, turns=10)
    c = await Client.open(fresh_server, token=token)
    await c.send({"type": "history", "conversation_id": conversation_id, "limit": 200})
    raw = await asyncio.wait_for(c.ws.recv(), 15)
    await c.close()
    page = json.loads(raw)
    assert page["type"] == "history" and page["has_more"] is True
    assert 1 <= len(page["messages"]) < 20
    assert len(raw) < PAGE_BOUND
    assert http_pages_seen(fresh_server, token, conversation_id) == 20


def http_pages_seen(server: Any, token: str, conversation_id: str) -> int:
    """Page the conversation over HTTP with limit 200 and `before`; every page bounded in size."""
    rest = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=20)
    seen, before = 0, None
    while True:
        r = rest.get(f"/api/conversations/{conversation_id}/messages",
                     params={"limit": 200, **({"before": before} if before else {})})
        assert r.status_code == 200 and len(r.content) < PAGE_BOUND
        body = r.json()
        seen += len(body["messages"])
        if not body["has_more"]:
            break
        before = body["messages"][0]["id"]
    rest.close()
    return seen


@aio
async def test_history_pages_never_read_do_not_pile_up(fresh_server):
    token, conversation_id = await big_conversation(fresh_server)
    request = frame(TEXT, json.dumps({"type": "history", "conversation_id": conversation_id, "limit": 200}).encode())
    attacks = [Attack(fresh_server.port, lambda ws: ws.send(request), path=f"/ws?token={token}") for _ in range(4)]
    worst, growth = await harm(fresh_server, attacks)
    assert worst < TURN_BOUND_S
    assert growth < RSS_BOUND_MB
