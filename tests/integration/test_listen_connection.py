"""The LISTEN connection keeps itself alive whatever fails, never leaks a half-set-up connection,
and says when it is down (/readyz, a metric). Against the real PostgreSQL, in-process."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from support.inprocess import aio

from server.recovery.leases import session_name
from server.replies.postgres import records as rec
from server.replies.postgres.listen import BROADCAST, ListenConnection

pytestmark = pytest.mark.usefixtures("pg")
CONNECT = asyncpg.connect  # the tests' own connections, whatever a test does to the server's


def metric(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, f"no metric {name}"
    return value


async def until(check: Callable[[], Any], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def sessions_of(database_url: str, owner: str) -> int:
    conn = await CONNECT(_dsn(database_url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                                       session_name(owner)))
    finally:
        await conn.close()


async def terminate(database_url: str, owner: str) -> None:
    conn = await CONNECT(_dsn(database_url))
    try:
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                           session_name(owner))
    finally:
        await conn.close()


def _dsn(database_url: str) -> str:
    from server.db.pg_turn_writes import asyncpg_dsn

    return asyncpg_dsn(database_url)


@pytest.fixture
def database_url(databases: Any) -> str:
    return str(databases.url("postgres"))


@contextlib.asynccontextmanager
async def listening(database_url: str) -> AsyncIterator[tuple[ListenConnection, list[rec.Record]]]:
    got: list[rec.Record] = []
    listen = ListenConnection(database_url, uuid.uuid4().hex, 0.005, got.extend, lambda: None, probe_s=0.2)
    await listen.start()
    try:
        yield listen, got
    finally:
        await listen.close()


@aio
async def test_an_unexpected_failure_while_reconnecting_does_not_end_the_keeper(database_url, monkeypatch):
    async with listening(database_url) as (listen, _):
        real_connect = asyncpg.connect
        failures = [RuntimeError("a failure nobody planned for"), asyncpg.InterfaceError("pool closed")]

        async def flaky_connect(*args: Any, **kwargs: Any) -> Any:
            if failures:
                raise failures.pop(0)
            return await real_connect(*args, **kwargs)

        monkeypatch.setattr(asyncpg, "connect", flaky_connect)
        await terminate(database_url, listen.owner)
        await until(lambda: not failures and listen.connected)
        assert await sessions_of(database_url, listen.owner) == 1
        assert metric("chat_notify_connected") == 1


@aio
async def test_a_connection_whose_listen_fails_is_closed_not_leaked(database_url, monkeypatch):
    async with listening(database_url) as (listen, _):
        real_add_listener = asyncpg.Connection.add_listener
        failures = [0, 1, 2]

        async def failing_add_listener(self: asyncpg.Connection, *args: Any) -> None:
            if failures:
                failures.pop()
                raise asyncpg.InterfaceError("LISTEN refused")
            await real_add_listener(self, *args)

        monkeypatch.setattr(asyncpg.Connection, "add_listener", failing_add_listener)
        await terminate(database_url, listen.owner)
        await until(lambda: not failures and listen.connected)
        await asyncio.sleep(0.3)  # a leaked connection would still be open
        assert await sessions_of(database_url, listen.owner) == 1


@aio
async def test_a_batch_postgresql_refuses_costs_only_its_bad_payload(database_url):
    async with listening(database_url) as (listen, _):
        other_got: list[rec.Record] = []
        other = ListenConnection(database_url, uuid.uuid4().hex, 0.005, other_got.extend, lambda: None)
        await other.start()
        try:
            listen.send(BROADCAST, rec.Gone("before"))
            # A payload PostgreSQL refuses (a NUL character cannot be in text), in the same tick.
            listen.send_encoded(BROADCAST, [b'["g",1,"bad\x00"]'])
            listen.send_encoded("chat_p_" + other.owner, [rec.encode(rec.Gone("after"))])
            await until(lambda: len(other_got) >= 2)
            assert other_got == [rec.Gone("before"), rec.Gone("after")]
            listen.send(BROADCAST, rec.Gone("later"))
            await until(lambda: rec.Gone("later") in other_got)
            assert listen.connected
        finally:
            await other.close()


@aio
async def test_readyz_and_a_metric_say_when_the_channel_is_down(database_url, monkeypatch):
    from server.replies.postgres.bus import PgReplyBus

    bus = PgReplyBus(60, 5, db=None, owner=uuid.uuid4().hex)  # type: ignore[arg-type]  # no reads here
    await bus.start(database_url, 0.005)
    try:
        assert bus.health() == {"notify": "ok"}

        async def unreachable(*args: Any, **kwargs: Any) -> Any:
            raise OSError("connection refused")

        monkeypatch.setattr(asyncpg, "connect", unreachable)
        assert bus.channel is not None
        bus.channel.probe_s = 0.1
        await terminate(database_url, bus.owner)
        await until(lambda: bus.health() == {"notify": "down"})
        await until(lambda: metric("chat_notify_connected") == 0)  # once the keeper noticed
        monkeypatch.undo()
        await until(lambda: bus.health() == {"notify": "ok"})
        assert metric("chat_notify_connected") == 1  # set before the connection counts as up
    finally:
        await bus.close()
