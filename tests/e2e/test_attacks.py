"""One client must not hurt another (PROTOCOL.md, "Limits and close codes"): attacks from a raw
socket client (tests/support/raw_ws.py) that writes frames byte by byte and never reads, against a
real server process, while another user plays turns. Each test measures the other user's slowest
turn and the server's RSS growth, and asserts generous bounds: the point is "seconds and hundreds
of MB" before the fix against "milliseconds and a few MB" after, not tight timings.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

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
