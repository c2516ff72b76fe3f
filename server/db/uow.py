"""The unit of work: one transaction, committed by whoever opened it, else rolled back.

A socket handler holds a `Database` (the factory) for its whole life and opens a unit of work
for each commit point of a turn. Between commits it holds no connection and no transaction, so
the number of open sockets and replies in flight is not bounded by the pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server import metrics
from server.db.engine import IMMEDIATE
from server.db.store import Store

log = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    """The database could not do the work (down, pool exhausted, disk full...)."""


class Database:
    """Owns the engine. SQLite has one writer: writes are serialised in the process."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self, write=True)

    def reader(self) -> UnitOfWork:
        """A read-only unit of work: no write lock, nothing to commit."""
        return UnitOfWork(self, write=False)

    def checked_out(self) -> int:
        return self.engine.pool.checkedout()  # type: ignore[attr-defined]

    async def ping(self) -> None:
        async with self.reader() as uow:
            await uow.store.ping()

    async def dispose(self) -> None:
        await self.engine.dispose()


class UnitOfWork:
    def __init__(self, db: Database, write: bool):
        self._db = db
        self._write = write
        self._conn: AsyncConnection | None = None
        self._locked = False
        self.store: Store

    async def __aenter__(self) -> UnitOfWork:
        lock = self._db._write_lock if self._write else None
        if lock is not None:
            await lock.acquire()
            self._locked = True
        try:
            conn = await self._db.engine.connect()
            if self._write and self._db.is_sqlite:
                conn = await conn.execution_options(**{IMMEDIATE: True})
            self._conn = conn
            await conn.begin()
        except (SQLAlchemyError, OSError) as e:
            await self._release()
            raise DatabaseUnavailable(str(e)) from e
        self.store = Store(conn)
        return self

    async def commit(self) -> None:
        assert self._conn is not None
        start = time.perf_counter()
        try:
            await self._conn.commit()
        except (SQLAlchemyError, OSError) as e:
            metrics.DB_COMMIT_FAILURES.inc()
            raise DatabaseUnavailable(str(e)) from e
        metrics.DB_COMMITS.inc()
        metrics.DB_COMMIT_SECONDS.observe(time.perf_counter() - start)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if self._conn is not None and self._conn.in_transaction():
                try:
                    await self._conn.rollback()
                except (SQLAlchemyError, OSError):
                    log.warning("rollback failed", exc_info=True)
        finally:
            await self._release()
        # Statements that failed inside the block surface as DatabaseUnavailable too; a unique
        # violation stays itself, the caller resolves it (a concurrent duplicate client_id).
        if isinstance(exc, SQLAlchemyError | OSError) and not isinstance(exc, IntegrityError):
            raise DatabaseUnavailable(str(exc)) from exc

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                await asyncio.shield(conn.close())
        except (SQLAlchemyError, OSError):
            log.warning("closing a connection failed", exc_info=True)
        finally:
            if self._locked:
                self._locked = False
                assert self._db._write_lock is not None
                self._db._write_lock.release()
