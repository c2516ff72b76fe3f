"""A turn's two writes on PostgreSQL, sent through asyncpg directly.

In the common case a turn's whole database work is two statements (store.py's `_append_statement`:
the user message with the claim on its reply, then the reply releasing it; a conversation's first
message is `_start_statement`). Through SQLAlchemy each one paid for a pool checkout and checkin,
a hop into its greenlet, an execution context and a result object: a third of a turn's CPU on
PostgreSQL, more than asyncpg's own work (docs/benchmarks.md). Here they run on an asyncpg pool
of their own, as prepared statements. Their SQL is still SQLAlchemy's, compiled once from the
statements in store.py, so each has one definition. Everything else stays on the engine.

They are committed in groups, as the SQLite writer does (sqlite_writer.py). Each statement has a
lane; the writes that arrive while the lane's commits are in flight (two at most) go into its
next one, up to 16 a commit, with no timer: an idle server adds no latency. A batch is one round
trip: asyncpg's `fetchmany` sends a Bind and an Execute per write and a single Sync, with no
BEGIN or COMMIT, so PostgreSQL runs the whole batch as one implicit transaction and commits it
(WAL flushed once) before it answers. A return is a commit of every write in it. A write alone
is a plain `fetchrow`, its own transaction, as before. In batches of 12, PostgreSQL's CPU per
turn is about 190 µs instead of 460 (2026-12-06, one connection).

One write's error must not fail the others of its batch. A batch is all or nothing, so when it
fails with an error of the statements (a unique violation from two resends racing, a deadlock, a
bad value), nothing of it is stored and each write is sent again on its own, autocommitted, for
its own outcome: the rare case pays a round trip per write. A connection that breaks, or a batch
that times out, fails every write of it with DatabaseUnavailable: none of it is committed or, if
the commit's answer was what got lost, all of it. A deleted conversation is no error: its
statement returns no row and the others theirs; each row carries its message id, by which it is
matched to its write.

Within a batch the writes run in order of conversation id, so that two batches (two lanes, or
two processes) take the conversations' row locks in one order and cannot deadlock on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from asyncpg.exceptions import OperatorInterventionError
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from server import metrics
from server.config import Settings
from server.db import store
from server.db.errors import DatabaseUnavailable


class _Compiled:
    """A statement as asyncpg takes it: SQL with $n parameters, and their names in order."""

    __slots__ = ("sql", "names", "defaults")

    def __init__(self, statement: Any):
        compiled = statement.compile(dialect=asyncpg_dialect())
        self.sql = str(compiled)
        self.names = tuple(compiled.positiontup or ())
        self.defaults = compiled.params  # the statement's own literals (the `+ 1` of last_seq)

    def args(self, params: dict[str, Any]) -> list[Any]:
        defaults = self.defaults
        return [params[name] if name in params else defaults[name] for name in self.names]


APPEND_CLAIMING = _Compiled(store.APPEND_CLAIMING)
APPEND_RELEASING = _Compiled(store.APPEND_RELEASING)
START_CONVERSATION = _Compiled(store.START_CONVERSATION)

# What a broken or unreachable server looks like from asyncpg (a constraint violation is not one).
# InternalClientError: a connection the server killed mid-operation ("cannot switch to state").
_UNAVAILABLE = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError,
                ConnectionError, OSError, asyncio.TimeoutError)


def asyncpg_dsn(database_url: str) -> str:
    """The engine's URL (postgresql+asyncpg://…) as asyncpg takes it."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


# pg_stat_activity tells these connections apart; not "chat-server <owner>", the LISTEN session (leases.py)
APPLICATION_NAME = "chat-server/turn-writes"


async def _nothing_to_reset(_conn: asyncpg.Connection) -> None:
    """A connection goes back to the pool as it came: the statements here set nothing in the
    session (asyncpg's default reset is a round trip per release: RESET ALL, UNLISTEN *, ...)."""


# Commits in flight per lane, and writes per commit. One commit in flight with no cap made the
# sockets move in lockstep (all 50 of the benchmark's writes in one batch, run one by one by one
# backend while the server and the load generator waited): 2,170 turns/s, done p99 61 ms. Two
# commits of at most 12-16 writes overlap the database's work with the server's: 2,230-2,390
# turns/s, p99 30-37 ms; 3 or 4 in flight of 8 measured the same (2026-12-06, 50 sockets).
_IN_FLIGHT = 2
_MAX_BATCH = 16


@dataclass(slots=True)
class _Write:
    args: list[Any]
    message_id: str
    conversation_id: str
    future: asyncio.Future[asyncpg.Record | None]


@dataclass(slots=True)
class _Lane:
    """One statement's writes: those waiting for the next commit, and how many commits are in flight."""
    statement: _Compiled
    pending: list[_Write] = field(default_factory=list)
    flushing: int = 0  # batches in flight


def _connection_lost(e: BaseException) -> bool:
    """The server restarted or the network broke: every pooled connection is as stale as this one."""
    return isinstance(e, asyncpg.PostgresConnectionError | asyncpg.exceptions.InternalClientError
                      | ConnectionError | OSError)


class PgTurnWrites:
    def __init__(self, pool: asyncpg.Pool, acquire_timeout_s: float, statement_timeout_s: float | None = None):
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s
        self._statement_timeout_s = statement_timeout_s  # None: the pool's command_timeout
        self._lanes = {statement: _Lane(statement) for statement in (APPEND_CLAIMING, APPEND_RELEASING,
                                                                      START_CONVERSATION)}
        self._flushes: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, settings: Settings) -> PgTurnWrites:
        # Connections are opened as turns need them, up to the engine's pool size; the pool
        # keeps them (no idle timeout), as the engine's pool does. Each lane holds at most
        # _IN_FLIGHT of them at a time.
        pool = await asyncpg.create_pool(asyncpg_dsn(settings.database_url), min_size=1,
                                         max_size=settings.pool_size, timeout=settings.db_connect_timeout_s,
                                         command_timeout=settings.db_statement_timeout_s,
                                         max_inactive_connection_lifetime=0,
                                         server_settings={"application_name": APPLICATION_NAME},
                                         reset=_nothing_to_reset)
        return cls(pool, settings.db_pool_timeout_s, settings.db_statement_timeout_s)

    async def append(self, params: dict[str, Any], claiming: bool) -> asyncpg.Record | None:
        """store.py's append statement with `params` (p_<column> names): the message's seq and
        parent_id, or None when nothing was written (see `Store.append_message`)."""
        return await self._submit(APPEND_CLAIMING if claiming else APPEND_RELEASING, params)

    async def start(self, params: dict[str, Any]) -> asyncpg.Record | None:
        """store.py's conversation start with `params`: seq 1, or None when the client_id was used."""
        return await self._submit(START_CONVERSATION, params)

    async def _submit(self, statement: _Compiled, params: dict[str, Any]) -> asyncpg.Record | None:
        """Queue the write on its statement's lane; its row once the commit that holds it returned."""
        future: asyncio.Future[asyncpg.Record | None] = asyncio.get_running_loop().create_future()
        lane = self._lanes[statement]
        lane.pending.append(_Write(statement.args(params), params["p_id"], params["p_conversation_id"], future))
        if lane.flushing < _IN_FLIGHT:
            lane.flushing += 1
            task = asyncio.create_task(self._flush(lane))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        # A waiter that is cancelled leaves its write in the batch: it is committed all the same.
        return await future

    async def _flush(self, lane: _Lane) -> None:
        """Commit the lane's writes, batch after batch, until none is waiting."""
        try:
            while lane.pending:
                # Everything queued while the previous batch was in flight goes into this one.
                if len(lane.pending) <= _MAX_BATCH:
                    batch, lane.pending = lane.pending, []
                else:
                    batch, lane.pending = lane.pending[:_MAX_BATCH], lane.pending[_MAX_BATCH:]
                try:
                    await self._commit(lane.statement, batch)
                except BaseException as e:  # a bug, or the task cancelled: no waiter is left hanging
                    error = e if isinstance(e, Exception) else DatabaseUnavailable("the write was cancelled")
                    for write in batch:
                        _settle(write, error=error)
                    if not isinstance(e, Exception):
                        raise
        finally:
            lane.flushing -= 1

    async def _commit(self, statement: _Compiled, batch: list[_Write]) -> None:
        start = time.perf_counter()
        # With a connection idle, acquiring does not wait: no timeout (and its timer and task).
        timeout = None if self._pool.get_idle_size() else self._acquire_timeout_s
        try:
            conn = await self._pool.acquire(timeout=timeout)
        except (asyncpg.PostgresError, *_UNAVAILABLE) as e:
            self._fail(batch, e)
            if _connection_lost(e):
                await self._pool.expire_connections()
            return
        released = False
        try:
            if len(batch) > 1:
                batch.sort(key=lambda w: w.conversation_id)  # one lock order for every batch (stable)
            try:
                if len(batch) == 1:
                    rows = [await conn.fetchrow(statement.sql, *batch[0].args)]
                else:
                    rows = await conn.fetchmany(statement.sql, [w.args for w in batch],
                                                timeout=self._statement_timeout_s)
            except TimeoutError as e:
                self._fail(batch, e)
                released = True
                self._after_timeout(conn)
                return
            except (asyncpg.PostgresError, *_UNAVAILABLE) as e:
                if _broken(e):
                    # The connection broke, or the server is shutting down or cancelled the batch:
                    # every write of it fails; none of it is committed (one transaction).
                    self._fail(batch, e)
                    _terminate(conn)
                    await self._pool.expire_connections()
                    return
                if len(batch) == 1:
                    self._fail(batch, e)
                    return
                # One write's error (a unique violation, a deadlock, a bad value) rolled the whole
                # batch back: send each again on its own, for its own outcome.
                released = await self._replay(conn, statement, batch)
                return
            elapsed = time.perf_counter() - start
            metrics.DB_COMMITS.inc(len(batch))
            metrics.DB_COMMIT_SECONDS.observe(elapsed)
            metrics.DB_UNITS_PER_COMMIT.observe(len(batch))
            if len(batch) == 1:
                _settle(batch[0], row=rows[0])
            else:
                by_id = {row[2]: row for row in rows}
                for write in batch:
                    _settle(write, row=by_id.get(write.message_id))
        finally:
            if not released:
                await self._pool.release(conn)

    def _after_timeout(self, conn: asyncpg.Connection) -> None:
        """A batch that timed out: asyncpg has sent PostgreSQL a cancel request, which rolls the
        batch back if it lands before the batch commits. Give it a second to land, in the
        background (the lane goes on), before the connection goes back to the pool; a connection
        that does not answer (a partition) is terminated instead, never reused."""
        task = asyncio.create_task(self._pool.release(conn, timeout=1.0))
        self._flushes.add(task)
        task.add_done_callback(_quietly)
        task.add_done_callback(self._flushes.discard)

    async def _replay(self, conn: asyncpg.Connection, statement: _Compiled, batch: list[_Write]) -> bool:
        """Each write of a failed batch alone, autocommitted; the replays share one statement
        timeout. True when the connection was handed on (after a timeout)."""
        metrics.DB_BATCHES_REPLAYED.inc()
        deadline = time.monotonic() + (self._statement_timeout_s or 3600.0)
        for i, write in enumerate(batch):
            start = time.perf_counter()
            try:
                row = await conn.fetchrow(statement.sql, *write.args, timeout=max(deadline - time.monotonic(), 0.001))
            except TimeoutError as e:
                self._fail(batch[i:], e)
                self._after_timeout(conn)
                return True
            except (asyncpg.PostgresError, *_UNAVAILABLE) as e:
                if _broken(e):
                    self._fail(batch[i:], e)
                    _terminate(conn)
                    await self._pool.expire_connections()
                    return False
                self._fail([write], e)
                continue
            metrics.DB_COMMITS.inc()
            metrics.DB_COMMIT_SECONDS.observe(time.perf_counter() - start)
            metrics.DB_UNITS_PER_COMMIT.observe(1)
            _settle(write, row=row)
        return False

    @staticmethod
    def _fail(batch: list[_Write], e: BaseException) -> None:
        if isinstance(e, asyncpg.IntegrityConstraintViolationError):
            # The callers resolve it as on the engine (a client_id committed by another socket
            # just now, a reply id taken by a sweep).
            for write in batch:
                _settle(write, error=_caused(IntegrityError("turn write", None, e), e))
            return
        metrics.DB_COMMIT_FAILURES.inc(len(batch))
        for write in batch:
            _settle(write, error=_caused(DatabaseUnavailable(str(e) or type(e).__name__), e))

    def checked_out(self) -> int:
        return self._pool.get_size() - self._pool.get_idle_size()

    async def close(self) -> None:
        """Finish the batches in flight (what they hold is committed and answered), then close."""
        if self._flushes:
            await asyncio.wait(list(self._flushes), timeout=5)
        try:
            await asyncio.wait_for(self._pool.close(), timeout=5)
        except TimeoutError:
            self._pool.terminate()


def _broken(e: BaseException) -> bool:
    """The connection is lost or unusable, or the server shuts down or cancelled the statement: no
    write of the batch would fare better alone."""
    return _connection_lost(e) or isinstance(e, asyncpg.InterfaceError | OperatorInterventionError)


def _quietly(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a release that failed has terminated its connection


def _terminate(conn: asyncpg.Connection) -> None:
    with contextlib.suppress(asyncpg.InterfaceError):  # already closed, and detached from the pool
        conn.terminate()


def _caused(error: Exception, cause: BaseException) -> Exception:
    error.__cause__ = cause
    return error


def _settle(write: _Write, row: asyncpg.Record | None = None, error: BaseException | None = None) -> None:
    if write.future.done():  # its waiter was cancelled
        return
    if error is not None:
        write.future.set_exception(error)
    else:
        write.future.set_result(row)
