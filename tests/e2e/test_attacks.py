"""One client must not hurt another (docs/protocol.md, "Limits and close codes"): attacks from a raw
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
import uuid
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


# -- anonymous floods, and the HTTP API ------------------------------------------------------------------
def ready_token(ws: RawWebSocket) -> str:
    opcode, payload = ws.recv_frame()
    assert opcode == TEXT
    return json.loads(payload)["token"]


def test_token_less_handshakes_past_the_address_rate_get_429_and_tokens_still_work(make_server):
    server = make_server("sqlite", CHAT_OPEN_MODE_USERS_PER_MINUTE=20)
    sockets = [RawWebSocket(server.port) for _ in range(30)]
    statuses = [ws.status for ws in sockets]
    assert statuses[:20] == [101] * 20 and set(statuses[20:]) == {429}, statuses
    assert int(sockets[-1].header("retry-after") or 0) >= 1
    token = ready_token(sockets[0])
    for ws in sockets:
        ws.close()
    with_token = RawWebSocket(server.port, path=f"/ws?token={token}")
    assert with_token.status == 101  # a user who kept its token is not a new user
    with_token.close()
    # Behind a trusted proxy (127.0.0.1 by default), the forwarded address is the one counted.
    forwarded = RawWebSocket(server.port, headers={"X-Forwarded-For": "203.0.113.9"})
    assert forwarded.status == 101
    forwarded.close()


@aio
async def test_a_flood_of_token_less_sockets_mints_no_more_than_the_address_rate(make_server):
    server = make_server("sqlite", CHAT_OPEN_MODE_USERS_PER_MINUTE=60)
    victim_token = await attacker_token(server)  # the other user has its token, as the widget keeps it

    def reconnect(ws: RawWebSocket) -> None:
        raise OSError("next")

    attack = Attack(server.port, reconnect, rcvbuf=None)
    victim = await Client.open(server, token=victim_token)
    await victim.complete("warm up")
    base = rss_mb(server.pid)
    attack.start()
    worst = 0.0
    deadline = time.monotonic() + ATTACK_S
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        await victim.complete("are you there")
        worst = max(worst, time.monotonic() - t0)
        await asyncio.sleep(0.1)
    attack.stop()
    await victim.close()
    growth = rss_mb(server.pid) - base
    minted = attack.statuses.count(101)
    print(f"{len(attack.statuses)} token-less handshakes, {minted} users minted; other user's slowest turn "
          f"{worst:.3f}s, server RSS +{growth:.0f} MB")
    assert minted <= 60 + ATTACK_S + 2  # a burst of 60, refilled at one a second
    assert attack.statuses.count(429) > 0
    assert worst < TURN_BOUND_S
    assert growth < RSS_BOUND_MB


def test_two_tokens_that_disagree_are_refused(make_server):
    server = make_server("sqlite")
    first = RawWebSocket(server.port)
    a = ready_token(first)
    first.close()
    second = RawWebSocket(server.port)
    b = ready_token(second)
    second.close()
    refused = RawWebSocket(server.port, path=f"/ws?token={a}", headers={"Authorization": f"Bearer {b}"})
    assert refused.status == 403
    refused.close()
    agreeing = RawWebSocket(server.port, path=f"/ws?token={a}", headers={"Authorization": f"Bearer {a}"})
    assert agreeing.status == 101
    agreeing.close()


def test_the_http_api_is_rate_limited_per_user_and_per_address(make_server):
    server = make_server("sqlite", CHAT_HTTP_REQUESTS_PER_MINUTE=5, CHAT_HTTP_REQUESTS_PER_MINUTE_PER_ADDRESS=12)
    tokens = []
    for _ in range(3):
        ws = RawWebSocket(server.port)
        tokens.append(ready_token(ws))
        ws.close()
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        def get(token: str) -> httpx.Response:
            return http.get("/api/conversations", headers={"Authorization": f"Bearer {token}"})

        assert [get(tokens[0]).status_code for _ in range(5)] == [200] * 5
        over = get(tokens[0])
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
        assert get(tokens[1]).status_code == 200  # another user is not affected...
        codes = [get(tokens[2]).status_code for _ in range(5)] + [get(tokens[1]).status_code for _ in range(3)]
        assert codes.count(429) >= 1  # ...until the address as a whole is over its rate (12)
        assert http.get("/healthz").status_code == 200  # probes are not limited


# -- requests that never finish ----------------------------------------------------------------------------
def closed_by_server(sock: socket.socket, deadline: float) -> float | None:
    """When the server closed `sock` (monotonic time), or None if it had not by `deadline`."""
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        while sock.recv(4096):
            pass
    except (TimeoutError, OSError):
        return None if time.monotonic() >= deadline else time.monotonic()
    return time.monotonic()


@aio
async def test_handshakes_and_requests_that_never_finish_are_closed_within_10_s(fresh_server):
    victim = await Client.open(fresh_server)  # opened before: a WebSocket is not timed out
    opened = time.monotonic()
    stalled = []
    for i in range(100):
        s = socket.create_connection(("127.0.0.1", fresh_server.port))
        if i % 2:
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # headers never finish
        else:
            s.sendall(b"GET /api/conversations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")  # nor the body
        stalled.append(s)
    trickle = socket.create_connection(("127.0.0.1", fresh_server.port))
    for piece in [b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n", b"X-C: 3\r\n"] * 4:
        try:
            trickle.sendall(piece)  # a byte now and then is not a whole request
        except OSError:
            break
        await asyncio.sleep(1)
    trickle_closed = await asyncio.to_thread(closed_by_server, trickle, opened + 15)
    closes = [await asyncio.to_thread(closed_by_server, s, opened + 15) for s in stalled]
    assert trickle_closed is not None and trickle_closed - opened < 14
    assert all(c is not None and c - opened < 14 for c in closes), closes
    await victim.complete("still here")  # after more than 10 s
    await victim.close()
    for s in [*stalled, trickle]:
        s.close()
    # A whole request after one on the same connection is answered.
    async with httpx.AsyncClient(base_url=fresh_server.base_url) as http:
        assert (await http.get("/healthz")).status_code == 200
        await asyncio.sleep(1)
        assert (await http.get("/healthz")).status_code == 200


@aio
async def test_http_pages_never_read_are_dropped_after_the_send_timeout(make_server):
    server = make_server("sqlite", CHAT_SEND_TIMEOUT_S=2)
    token, conversation_id = await big_conversation(server, turns=10)
    base = rss_mb(server.pid)
    request = (f"GET /api/conversations/{conversation_id}/messages?limit=200 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    readers = []
    for _ in range(10):  # 20 pipelined requests of a 1 MiB page each: more than the kernel's buffers hold
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", server.port))
        s.sendall(request * 20)
        readers.append(s)
    peak = base
    for _ in range(12):
        await asyncio.sleep(0.5)
        peak = max(peak, rss_mb(server.pid))

    def outcome(s: socket.socket) -> str:
        s.settimeout(3)
        n = 0
        try:
            while chunk := s.recv(1 << 20):
                n += len(chunk)
        except ConnectionResetError:
            return "dropped"
        except TimeoutError:
            return f"still open after {n} bytes"
        return "dropped" if n < 10 * 2**20 else f"answered ({n} bytes)"  # cut short: 20 pages are ~19 MiB

    outcomes = [await asyncio.to_thread(outcome, s) for s in readers]
    for s in readers:
        s.close()
    print(f"10 connections x 20 unread HTTP pages: server RSS {base:.0f} -> {peak:.0f} MB; {outcomes}")
    assert all(o == "dropped" for o in outcomes), outcomes
    assert peak - base < RSS_BOUND_MB


# -- frames that cost reads, not turns ---------------------------------------------------------------------
@aio
async def test_history_resume_and_cancel_by_id_are_budgeted_per_user_across_sockets(make_server):
    """Each costs database reads (or a message to every process), bounded before only by each
    socket's frame rate, ten sockets per user, against a pool of ten connections."""
    server = make_server("sqlite", CHAT_READS_PER_MINUTE="60", CHAT_MAX_FRAMES_PER_SECOND="200")
    flooder = await Client.open(server)
    token = flooder.token
    sockets = [flooder] + [await Client.open(server, token=token) for _ in range(3)]
    victim = await Client.open(server)
    try:
        conversation_id = (await flooder.complete("something to read")).ack["conversation_id"]
        kinds = [{"type": "history", "conversation_id": conversation_id},
                 {"type": "resume", "reply_to": conversation_id},
                 {"type": "cancel", "message_id": conversation_id}]
        for i in range(150):
            await sockets[i % len(sockets)].send(kinds[i % len(kinds)])
        answered = limited = 0
        for c in sockets:
            while True:
                try:
                    f = await c.recv(timeout=1.0)
                except TimeoutError:
                    break
                if f["type"] == "error" and f["code"] == "rate_limited":
                    limited += 1
                else:
                    answered += 1
        # A cancel by id is answered by nothing: of 150 frames, 100 expect an answer.
        assert answered <= 60 and limited >= 150 - 65, (answered, limited)  # 60, and what refilled meanwhile
        assert (await victim.complete("still served")).done["status"] == "complete"
        assert (await sockets[1].turn("the flooder's turns are not reads")).done is not None
    finally:
        for c in [*sockets, victim]:
            await c.close()


@pytest.mark.postgres
@aio
async def test_a_cancel_of_an_unknown_id_repeated_is_broadcast_to_other_processes_once(make_server):
    server = make_server("postgres")
    c = await Client.open(server)
    try:
        await c.complete("warm up")  # the LISTEN connection has sent what it had
        await asyncio.sleep(0.2)
        sent = server.metric("chat_notify_payloads_total")
        for _ in range(20):  # a tick (20 ms) apart: each would be a notification of its own
            await c.send({"type": "cancel", "message_id": "00000000-0000-4000-8000-000000000000"})
            await asyncio.sleep(0.03)
        await c.history(str(uuid.uuid4()))  # the cancels were read by now
        await asyncio.sleep(0.3)  # a tick or more
        assert server.metric("chat_notify_payloads_total") - sent == 1
    finally:
        await c.close()
