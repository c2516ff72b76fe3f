"""A turn's two writes on PostgreSQL, sent through asyncpg directly.

In the common case a turn's whole database work is two statements (store.py's `_append_statement`:
the user message with the claim on its reply, then the reply releasing it; a conversation's first
message is `_start_statement`). Through SQLAlchemy each one paid for a pool checkout and checkin,
a hop into its greenlet, an execution context and a result object: a third of a turn's CPU on
PostgreSQL, more than asyncpg's own work (docs/benchmarks.md). Here they run on an asyncpg pool
of their own, as prepared statements, one round trip each. Their SQL is still SQLAlchemy's,
compiled once from the statements in store.py, so each has one definition. Everything else stays
on the engine.

Each statement is sent with no BEGIN or COMMIT around it: PostgreSQL runs it as its own
transaction and commits it (WAL flushed) before it answers, so a return is a commit.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
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


class PgTurnWrites:
    def __init__(self, pool: asyncpg.Pool, acquire_timeout_s: float):
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s

    @classmethod
    async def open(cls, settings: Settings) -> PgTurnWrites:
        # Connections are opened as turns need them, up to the engine's pool size; the pool
        # keeps them (no idle timeout), as the engine's pool does.
        pool = await asyncpg.create_pool(asyncpg_dsn(settings.database_url), min_size=1,
                                         max_size=settings.pool_size, timeout=settings.db_connect_timeout_s,
                                         command_timeout=settings.db_statement_timeout_s,
                                         max_inactive_connection_lifetime=0,
                                         server_settings={"application_name": APPLICATION_NAME},
                                         reset=_nothing_to_reset)
        return cls(pool, settings.db_pool_timeout_s)

    async def append(self, params: dict[str, Any], claiming: bool) -> asyncpg.Record | None:
        """store.py's append statement with `params` (p_<column> names): the message's seq and
        parent_id, or None when nothing was written (see `Store.append_message`)."""
        return await self._run(APPEND_CLAIMING if claiming else APPEND_RELEASING, params)

    async def start(self, params: dict[str, Any]) -> asyncpg.Record | None:
        """store.py's conversation start with `params`: seq 1, or None when the client_id was used."""
        return await self._run(START_CONVERSATION, params)

    async def _run(self, statement: _Compiled, params: dict[str, Any]) -> asyncpg.Record | None:
        args = statement.args(params)
        start = time.perf_counter()
        # With a connection idle, acquiring does not wait: no timeout (and its timer and task).
        timeout = None if self._pool.get_idle_size() else self._acquire_timeout_s
        try:
            async with self._pool.acquire(timeout=timeout) as conn:
                try:
                    row: asyncpg.Record | None = await conn.fetchrow(statement.sql, *args)
                except TimeoutError:
                    conn.terminate()  # it may be stuck for good (a partition): never back into the pool
                    raise
        except asyncpg.IntegrityConstraintViolationError as e:
            # The callers resolve it as on the engine (a client_id committed by another socket
            # just now, a reply id taken by a sweep).
            raise IntegrityError(statement.sql, None, e) from e
        except (asyncpg.PostgresError, *_UNAVAILABLE) as e:
            metrics.DB_COMMIT_FAILURES.inc()
            if isinstance(e, asyncpg.PostgresConnectionError | asyncpg.exceptions.InternalClientError
                          | ConnectionError | OSError):
                # The server restarted or the network broke: every pooled connection is as
                # stale as this one. Replace them, rather than fail one turn per connection.
                await self._pool.expire_connections()
            raise DatabaseUnavailable(str(e) or type(e).__name__) from e
        metrics.DB_COMMITS.inc()
        metrics.DB_COMMIT_SECONDS.observe(time.perf_counter() - start)
        return row

    def checked_out(self) -> int:
        return self._pool.get_size() - self._pool.get_idle_size()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), timeout=5)
        except TimeoutError:
            self._pool.terminate()
