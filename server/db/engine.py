"""Engine construction: pool limits and SQLite's durability and locking settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from server.config import Settings


def make_engine(settings: Settings, *, pooled: bool = True) -> AsyncEngine:
    # Every unit of work ends its transaction itself, so the pool's rollback-on-return would be
    # a wasted round trip (a thread hop per commit on aiosqlite).
    kwargs: dict[str, Any] = {"pool_reset_on_return": None}
    if pooled:
        # No overflow: connections opened past the pool size would be opened and closed again at
        # every burst of load, each a new backend process on PostgreSQL.
        kwargs.update(pool_size=settings.pool_size, max_overflow=0, pool_timeout=settings.db_pool_timeout_s)
    else:
        kwargs["poolclass"] = NullPool
    if settings.is_sqlite:
        path = settings.sqlite_path
        if path is not None:
            private_sqlite_file(path)
        kwargs["connect_args"] = {"timeout": settings.sqlite_busy_timeout_ms / 1000}
    else:
        # asyncpg waits 60 s for a host that never answers; an operator should hear sooner. The
        # server's own pool bounds every statement too (migrations, unpooled, may take longer).
        kwargs["connect_args"] = {"timeout": settings.db_connect_timeout_s}
        if pooled:
            kwargs["connect_args"]["command_timeout"] = settings.db_statement_timeout_s
    engine = create_async_engine(settings.database_url, **kwargs)
    if settings.is_sqlite:
        configure_sqlite(engine.sync_engine, settings, writer=False)
    return engine


def configure_sqlite(sync_engine: Engine, settings: Settings, writer: bool) -> None:
    """Durability and locking for every SQLite connection; `writer`: its transactions write."""

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Take transaction control from the driver so that BEGIN is ours (IMMEDIATE for writes).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={settings.sqlite_synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={settings.sqlite_busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        # SQLite's lower() and LIKE fold ASCII only: a title search for "Über" must find "über".
        dbapi_conn.create_function("casefold", 1, _casefold, deterministic=True)

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A write transaction takes the write lock at BEGIN: a deferred one that upgrades later
        # can fail with SQLITE_BUSY without waiting (another process wrote first), which
        # busy_timeout cannot help.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


def _casefold(value: object) -> object:
    return value.casefold() if isinstance(value, str) else value


def private_sqlite_file(path: Path) -> None:
    """The SQLite file holds every message and the open-mode signing secret: its directory is
    made 0700 when we create it, and the file (and its -wal, -shm, lock files, which SQLite creates
    with the database's mode) 0600, created so before SQLite opens it, and fixed if an older
    version made it world-readable."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)  # mkdir's mode is filtered by the umask
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # SQLite takes an empty file as new
    for p in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal", ".migrate-lock"))):
        if p.exists() and p.stat().st_mode & 0o077:
            os.chmod(p, 0o600)
