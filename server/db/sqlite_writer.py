"""SQLite's one writer, with group commit.

SQLite takes one writer at a time, so the process serialises its writes anyway; doing them on
one thread lets every unit of work that is waiting at that moment share one transaction and one
fsync. Each unit runs inside a SAVEPOINT, so one that raises is undone alone; none is reported
done before the COMMIT that holds it has returned.

It uses the synchronous sqlite3 driver directly on its own thread: through aiosqlite every
statement costs three or four hand-offs between threads (cursor, execute, fetch, close), here a
whole batch costs one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from server import metrics
from server.config import Settings
from server.db.engine import configure_sqlite
from server.db.store import Store

log = logging.getLogger(__name__)

Job = tuple[Callable[[Store], Any], asyncio.Future[Any]]


class SqliteWriter:
    def __init__(self, settings: Settings):
        path = settings.sqlite_path
        url = f"sqlite+pysqlite:///{path}" if path is not None else "sqlite+pysqlite://"
        self.engine: Engine = create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False,
                                                     "timeout": settings.sqlite_busy_timeout_ms / 1000})
        configure_sqlite(self.engine, settings, writer=True)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._conn: Connection | None = None
        self._pending: list[Job] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        self._conn = await asyncio.get_running_loop().run_in_executor(self._thread, self.engine.connect)
        self._task = asyncio.create_task(self._loop(), name="sqlite-writer")

    async def submit(self, work: Callable[[Store], Any]) -> Any:
        if self._closing:
            raise RuntimeError("the SQLite writer is closed")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((work, future))
        self._wake.set()
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            # Everything submitted while the previous batch ran goes into this one.
            jobs, self._pending = self._pending, []
            try:
                outcomes = await loop.run_in_executor(self._thread, self._run_batch, [w for w, _ in jobs])
            except Exception as e:  # the batch's COMMIT (or BEGIN) failed: none of it is stored
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), (ok, value) in zip(jobs, outcomes, strict=True):
                if future.done():  # the waiter was cancelled; its work is committed all the same
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _run_batch(self, works: list[Callable[[Store], Any]]) -> list[tuple[bool, Any]]:
        """On the writer thread: one transaction, a savepoint per unit of work."""
        assert threading.current_thread().name.startswith("sqlite-writer")
        conn = self._connection()
        outcomes: list[tuple[bool, Any]] = []
        try:
            transaction = conn.begin()  # BEGIN IMMEDIATE
            store = Store(conn)
            # The savepoints on the driver itself: through SQLAlchemy each is two more executions.
            driver = conn.connection.dbapi_connection
            assert driver is not None
            for work in works:
                driver.execute("SAVEPOINT unit")
                try:
                    outcomes.append((True, work(store)))
                    driver.execute("RELEASE unit")
                except Exception as e:
                    driver.execute("ROLLBACK TO unit")
                    driver.execute("RELEASE unit")
                    outcomes.append((False, e))
            start = time.perf_counter()
            transaction.commit()
            metrics.DB_COMMIT_SECONDS.observe(time.perf_counter() - start)
            metrics.DB_COMMITS.inc(len(works))
            metrics.DB_UNITS_PER_COMMIT.observe(len(works))
        except Exception:
            metrics.DB_COMMIT_FAILURES.inc(len(works))
            self._reset()
            raise
        return outcomes

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self.engine.connect()
        return self._conn

    def _reset(self) -> None:
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()
        self._conn = None

    async def close(self) -> None:
        """Finish what was submitted, then stop the thread."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._reset)
        self._thread.shutdown(wait=True)
        self.engine.dispose()
