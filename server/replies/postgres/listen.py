"""One dedicated PostgreSQL connection per process for LISTEN/NOTIFY: outside the pool (a LISTEN
belongs to a session, and a pooled connection changes hands), named "chat-server <owner>" so
that other processes see from pg_stat_activity when this one dies.

Sending: records wait in memory and go out at most once per tick (`tick_s`), packed into
payloads and sent in one statement, `SELECT pg_notify(c, p) FROM unnest($1, $2)`, on this connection in
autocommit. Never from a turn's transaction: a transaction that notified takes a database-wide
lock at commit and holds it through its WAL flush, which would serialise every turn of every
process. Nothing waits for a send: the producer of a reply never waits on another process.

Receiving: asyncpg calls back on each notification; this process's own are dropped (a session
hears its own NOTIFY). asyncpg does not notice by itself that a connection died (no traffic, no
error): a probe every `probe_s` with a timeout, and its termination callback, make it reconnect;
`on_gap` then lets the bus ask again for what it may have missed while it was gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from server import metrics
from server.db.pg_turn_writes import asyncpg_dsn
from server.recovery.leases import session_name
from server.replies.postgres import records

log = logging.getLogger(__name__)

BROADCAST = "chat_all"


def process_channel(owner: str) -> str:
    return "chat_p_" + owner  # an identifier: 7 + 32 hex characters, under PostgreSQL's 63


class ListenConnection:
    def __init__(self, database_url: str, owner: str, tick_s: float, on_records: Callable[[list[records.Record]], None],
                 on_gap: Callable[[], None], probe_s: float = 2.0, connect_timeout_s: float = 10.0):
        self.dsn = asyncpg_dsn(database_url)
        self.owner = owner
        self.tick_s = tick_s
        self.probe_s = probe_s
        self.connect_timeout_s = connect_timeout_s
        self.on_records = on_records
        self.on_gap = on_gap
        self.channels = (BROADCAST, process_channel(owner))
        # Records to send: channel -> encoded records, and producers asked for at each tick.
        self._out: dict[str, list[bytes]] = {}
        self._producers: list[Callable[[], None]] = []
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._pid = 0
        self._lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._lock = asyncio.Lock()  # one statement at a time on the connection (asyncpg's rule)

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        await self._connect()
        self._tasks = [asyncio.ensure_future(self._send_loop()), asyncio.ensure_future(self._keep_alive())]

    # -- sending ---------------------------------------------------------------------------------
    def send(self, channel: str, record: records.Record) -> None:
        """Queue one record; one that no payload can carry is dropped here, counted, never sent."""
        try:
            encoded = records.encode(record)
        except records.RecordTooLarge:
            log.error("dropped a %s record too large for a notification", type(record).__name__)
            metrics.NOTIFY_DROPPED.inc()
            return
        self.send_encoded(channel, [encoded])

    def send_encoded(self, channel: str, encoded: list[bytes]) -> None:
        self._out.setdefault(channel, []).extend(encoded)
        self._wake.set()

    def on_tick(self, producer: Callable[[], None]) -> None:
        """`producer` runs before each send and may add records (coalesced deltas)."""
        self._producers.append(producer)

    def wake(self) -> None:
        self._wake.set()

    async def _send_loop(self) -> None:
        """At most one send per tick: what comes after a quiet spell goes at once, what comes
        within a tick of the last send waits for the tick's end, coalesced with the rest."""
        loop = asyncio.get_running_loop()
        last = 0.0
        while True:
            await self._wake.wait()
            wait = last + self.tick_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            last = loop.time()
            try:
                await self.flush()
            except Exception:  # never the end of sending: the next tick tries again
                log.exception("sending notifications failed")

    async def flush(self) -> None:
        self._wake.clear()
        for producer in self._producers:
            try:
                producer()
            except Exception:
                log.exception("preparing notifications failed")
        if not self._out:
            return
        out, self._out = self._out, {}
        channels: list[str] = []
        payloads: list[str] = []
        for channel, encoded in out.items():
            for payload in records.pack(encoded):
                channels.append(channel)
                payloads.append(payload)
        conn = self._conn
        if conn is None or conn.is_closed():
            metrics.NOTIFY_DROPPED.inc(len(payloads))
            return  # the receivers' gap handling asks again
        try:
            await self._notify(conn, channels, payloads)
        except asyncpg.PostgresError:
            # PostgreSQL refused something in the batch, not the connection: send the records one
            # by one, so that one bad record costs only itself, not every user's tick.
            await self._one_by_one(conn, out)
        except Exception:
            self._failed(len(payloads))

    async def _one_by_one(self, conn: asyncpg.Connection, out: dict[str, list[bytes]]) -> None:
        left = [(channel, record) for channel, encoded in out.items() for record in encoded]
        for sent, (channel, record) in enumerate(left):
            try:
                await self._notify(conn, [channel], records.pack([record]))
            except asyncpg.PostgresError:
                log.error("PostgreSQL refused a notification record of %d bytes", len(record), exc_info=True)
                metrics.NOTIFY_DROPPED.inc()
            except Exception:
                self._failed(len(left) - sent)  # this one and the rest
                return

    async def _notify(self, conn: asyncpg.Connection, channels: list[str], payloads: list[str]) -> None:
        async with self._lock:
            await conn.execute("SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)",
                               channels, payloads, timeout=5)
        metrics.NOTIFY_SENT.inc(len(payloads))

    def _failed(self, payloads: int) -> None:
        log.warning("sending %d notification(s) failed; reconnecting", payloads, exc_info=True)
        metrics.NOTIFY_DROPPED.inc(payloads)
        self._lost.set()

    # -- receiving ---------------------------------------------------------------------------------
    def _notified(self, _conn: Any, pid: int, _channel: str, payload: str) -> None:
        if pid == self._pid:
            return  # our own
        try:
            received, skipped = records.unpack(payload)
        except ValueError:
            log.warning("ignored a notification that is not ours")
            return
        if skipped:  # a process of another release: its newer records are not for us
            metrics.NOTIFY_SKIPPED.inc(skipped)
        try:
            self.on_records(received)
        except Exception:
            log.exception("handling a notification failed")

    # -- the connection ------------------------------------------------------------------------------
    async def _connect(self) -> None:
        # synchronous_commit off: a notification needs no durability (what must survive is in
        # the tables), so its commit does not wait for a WAL flush, and the queue's lock is held
        # that much shorter.
        conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout_s,
                                     server_settings={"application_name": session_name(self.owner),
                                                      "synchronous_commit": "off"})
        try:
            for channel in self.channels:
                await conn.add_listener(channel, self._notified)
            conn.add_termination_listener(lambda _c: self._lost.set())
        except BaseException:
            conn.terminate()  # half set up: never kept, never leaked
            raise
        self._pid = conn.get_server_pid()
        self._conn = conn
        self._lost.clear()
        metrics.NOTIFY_CONNECTED.set(1)

    async def _keep_alive(self) -> None:
        """Probe the connection; when it is gone, connect again (backing off), then report the gap.
        Whatever fails, it goes on until the process closes: a loop that ended would leave every
        cross-process send counted as dropped for the life of the process."""
        while not self._closing:
            try:
                if await self._alive():
                    continue
                await self._reconnect()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the LISTEN connection's keeper failed; trying again")
                await asyncio.sleep(self.probe_s)

    async def _alive(self) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._lost.wait(), self.probe_s)
        conn = self._conn
        if self._lost.is_set() or conn is None or self._closing:
            return self._closing
        try:
            async with self._lock:
                await conn.fetchval("SELECT 1", timeout=self.probe_s)
            return True
        except Exception:
            return False

    async def _reconnect(self) -> None:
        log.warning("the LISTEN connection was lost; reconnecting")
        metrics.NOTIFY_RECONNECTS.inc()
        metrics.NOTIFY_CONNECTED.set(0)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()
        delay = 0.1
        while not self._closing:
            try:
                await self._connect()
                break
            except Exception as e:
                log.warning("LISTEN connection failed (%s); again in %.1fs", type(e).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        if self._closing:
            return
        log.info("LISTEN connection back")
        self.on_gap()

    async def close(self) -> None:
        """Send what waits, then close."""
        with contextlib.suppress(Exception):
            await self.flush()
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 2)
            self._conn = None
        metrics.NOTIFY_CONNECTED.set(0)
