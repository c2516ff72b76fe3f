"""Units of work: a function of the store, run in one transaction, committed or rolled back whole.

A socket handler holds a `Database` for its whole life and runs one unit of work at each commit
point of a turn. Between them it holds no connection and no transaction, so the number of open
sockets and replies in flight is not bounded by the pool.

    message = await db.write(lambda store: store.add_message(...))   # returns after COMMIT

Who calls `write` knows where the transaction ends: when the call returns, it is committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from server import metrics
from server.db.sqlite_writer import SqliteWriter
from server.db.store import Store

T = TypeVar("T")
Work = Callable[[Store], T]


class DatabaseUnavailable(Exception):
    """The database could not do the work (down, pool exhausted, disk full...)."""


class Database:
    """Writes on SQLite go through one writer thread that commits in groups (sqlite_writer.py);
    reads, and everything on PostgreSQL, run on a pooled async connection."""

    def __init__(self, engine: AsyncEngine, writer: SqliteWriter | None = None):
        self.engine = engine
        self.writer = writer

    async def write(self, work: Work[T]) -> T:
        """Run `work` in a transaction and commit it; the result once the commit has returned."""
        if self.writer is not None:
            try:
                return await self.writer.submit(work)
            except (SQLAlchemyError, OSError) as e:
                if isinstance(e, IntegrityError):
                    raise
                raise DatabaseUnavailable(str(e)) from e
        return await self._run(work, commit=True)

    async def write_statement(self, work: Work[T]) -> T:
        """Like `write`, for work that is a single statement on PostgreSQL.

        The statement is sent with no BEGIN or COMMIT around it: PostgreSQL runs it as its own
        transaction, committed (and flushed, as any commit) before it answers. One round trip
        where a unit of work takes two more. On SQLite it is a unit like any other."""
        if self.writer is not None:
            return await self.write(work)
        return await self._run(work, commit=True, autocommit=True)

    async def read(self, work: Work[T]) -> T:
        return await self._run(work, commit=False)

    async def _run(self, work: Work[T], commit: bool, autocommit: bool = False) -> T:
        def unit() -> T:
            # The whole unit in one hop into SQLAlchemy's greenlet: connect, BEGIN, the work,
            # COMMIT, return to the pool (five hops through the AsyncConnection methods otherwise).
            with self.engine.sync_engine.connect() as conn:
                if autocommit:  # the statement commits itself: its run is the commit
                    conn.execution_options(isolation_level="AUTOCOMMIT")
                    return _committing(lambda: work(Store(conn)))
                transaction = conn.begin()
                result = work(Store(conn))
                if commit:
                    _committing(transaction.commit)
                return result  # leaving the block rolls back what was not committed

        try:
            return await greenlet_spawn(unit)
        except IntegrityError:
            raise  # the caller resolves it (a concurrent duplicate client_id)
        except (SQLAlchemyError, OSError) as e:
            raise DatabaseUnavailable(str(e)) from e

    def checked_out(self) -> int:
        return self.engine.pool.checkedout()  # type: ignore[attr-defined]

    async def ping(self) -> None:
        await self.read(lambda store: store.ping())

    async def dispose(self) -> None:
        if self.writer is not None:
            await self.writer.close()
        await self.engine.dispose()


def _committing(commit: Callable[[], T]) -> T:
    """Run what commits, counted and timed for /metrics."""
    start = time.perf_counter()
    try:
        result = commit()
    except (SQLAlchemyError, OSError):
        metrics.DB_COMMIT_FAILURES.inc()
        raise
    metrics.DB_COMMITS.inc()
    metrics.DB_COMMIT_SECONDS.observe(time.perf_counter() - start)
    return result
