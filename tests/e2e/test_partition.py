"""A partition from PostgreSQL: a TCP proxy between the server and the database stops forwarding,
with no reset and no close (a pulled cable, a frozen host). Every call on a person's path is
bounded: a message gets `unavailable` with its client_id within seconds, a new socket gets
`ready`, /readyz says 503; after healing, a resend is stored once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.client import Client, Rest, aio, cid
from support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

TIMEOUTS = {"CHAT_DB_STATEMENT_TIMEOUT_S": "2", "CHAT_DB_CONNECT_TIMEOUT_S": "2", "CHAT_DB_POOL_TIMEOUT_S": "2"}


@pytest.fixture
def partitioned(make_server: Any) -> Iterator[tuple[Any, TcpProxy]]:
    server = make_server("postgres", start=False, CHAT_ECHO_DELAY_MS="5", **TIMEOUTS)
    host_port = server.db_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    with TcpProxy(target_port=int(port), target_host=host) as proxy:
        server.db_url = server.db_url.replace(f"@{host_port}/", f"@127.0.0.1:{proxy.port}/")
        server.start()
        yield server, proxy


def readyz(server: Any) -> int:
    return httpx.get(server.base_url + "/readyz", timeout=30).status_code


@aio
async def test_a_partition_answers_within_seconds_and_a_resend_after_healing_is_stored_once(partitioned):
    server, proxy = partitioned
    c = await Client.open(server)
    try:
        await c.complete("before the partition")
        proxy.freeze()
        key = cid()
        # Unbounded before: no ack and no error for 90 s.
        t = await c.turn("during the partition", client_id=key, timeout=30)
        assert t.ack is None and t.error is not None, t.frames
        assert t.error["code"] == "unavailable" and t.error["client_id"] == key, t.error

        # A new socket still gets its ready (what is in flight here only), and /readyz says 503.
        other = await Client.open(server)
        await other.close()
        assert await asyncio.to_thread(readyz, server) == 503

        proxy.thaw()
        deadline = time.monotonic() + 30
        while True:  # connections discarded during the partition are opened again as needed
            t = await c.turn("during the partition", client_id=key, timeout=30)
            if t.done is not None or time.monotonic() > deadline:
                break
            assert t.error is not None and t.error["code"] == "unavailable", t.frames
            await asyncio.sleep(0.5)
        assert t.done is not None and t.done["status"] == "complete", t.frames
        assert t.ack is not None and t.ack["duplicate"] is False
        again = await c.turn("during the partition", client_id=key, timeout=30)
        assert again.ack is not None and again.ack["duplicate"] is True
        messages = Rest(server, c.token).all_messages(t.ack["conversation_id"])
        assert [m.get("client_id") for m in messages if m["role"] == "user"].count(key) == 1
        assert await asyncio.to_thread(readyz, server) == 200
    finally:
        proxy.thaw()
        await c.close()
