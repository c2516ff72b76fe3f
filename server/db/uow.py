"""Units of work: a function of the store, run in one transaction, committed or rolled back whole.

A socket handler holds a `Database` for its whole life and runs one unit of work at each commit
point of a turn. Between them it holds no connection and no transaction, so the number of open
sockets and replies in flight is not bounded by the pool.

    message = await db.write(lambda store: store.add_message(...))   # returns after COMMIT

Who calls `write` knows where the transaction ends: when the call returns, it is committed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from server import metrics
from server.db.errors import DatabaseUnavailable
from server.db.pg_turn_writes import PgTurnWrites
from server.db.sqlite_writer import SqliteWriter
from server.db.store import Store, append_params
from server.domain import Claim, MessageRecord, title_from

__all__ = ["Database", "DatabaseUnavailable", "Work"]

T = TypeVar("T")
Work = Callable[[Store], T]


class Database:
    """Writes on SQLite go through one writer thread that commits in groups (sqlite_writer.py);
    on PostgreSQL a turn's writes go through asyncpg directly, committed in groups too
    (pg_turn_writes.py). The rest runs on a pooled connection of the engine."""

    def __init__(self, engine: AsyncEngine, writer: SqliteWriter | None = None,
                 turn_writes: PgTurnWrites | None = None):
        self.engine = engine
        self.writer = writer
        self.turn_writes = turn_writes  # PostgreSQL: a turn's two writes, on asyncpg directly

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

    async def append_message(self, message: MessageRecord, user_id: str,
                             claim: Claim | None = None) -> MessageRecord | None:
        """`Store.append_message`, committed when it returns: a turn's two writes.

        On PostgreSQL it is one statement, through asyncpg directly, committed with the turn
        writes sent at the same moment (pg_turn_writes.py); IntegrityError for its own unique
        violation only, DatabaseUnavailable when the database is broken, unreachable or too slow.
        On SQLite it is a unit like any other."""
        if self.turn_writes is None:
            return await self.write(lambda store: store.append_message(message, user_id, claim))
        row = await self.turn_writes.append(append_params(message, user_id, claim), claiming=claim is not None)
        return None if row is None else dataclasses.replace(message, seq=row[0], parent_id=row[1])

    async def start_conversation(self, message: MessageRecord, user_id: str, claim: Claim) -> MessageRecord | None:
        """`Store.start_conversation`, committed when it returns: one statement on PostgreSQL
        (through asyncpg, as `append_message`), a unit like any other on SQLite."""
        if self.turn_writes is None:
            return await self.write(lambda store: store.start_conversation(message, user_id, claim))
        params = append_params(message, user_id, claim)
        params["p_title"] = title_from(message.content)
        row = await self.turn_writes.start(params)
        return None if row is None else dataclasses.replace(message, seq=row[0], parent_id=None)

    async def read(self, work: Work[T]) -> T:
        return await self._run(work, commit=False)

    async def _run(self, work: Work[T], commit: bool) -> T:
        def unit() -> T:
            # The whole unit in one hop into SQLAlchemy's greenlet: connect, BEGIN, the work,
            # COMMIT, return to the pool (five hops through the AsyncConnection methods otherwise).
            with self.engine.sync_engine.connect() as conn:
                try:
                    transaction = conn.begin()
                    result = work(Store(conn))
                    if commit:
                        _committing(transaction.commit)
                except TimeoutError:
                    conn.invalidate()  # a statement that timed out: the connection may be stuck for good
                    raise
                return result  # leaving the block rolls back what was not committed

        try:
            return await greenlet_spawn(unit)
        except IntegrityError:
            raise  # the caller resolves it (a concurrent duplicate client_id)
        except (SQLAlchemyError, OSError) as e:
            raise DatabaseUnavailable(str(e)) from e

    def checked_out(self) -> int:
        fast = self.turn_writes.checked_out() if self.turn_writes is not None else 0
        return self.engine.pool.checkedout() + fast  # type: ignore[attr-defined,no-any-return]

    async def ping(self) -> None:
        await self.read(lambda store: store.ping())

    async def dispose(self) -> None:
        if self.writer is not None:
            await self.writer.close()
        if self.turn_writes is not None:
            await self.turn_writes.close()
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
