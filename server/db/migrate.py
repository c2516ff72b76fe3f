"""Bring the schema up to date with Alembic, safely when several processes start at once."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from alembic import command
from server.config import Settings
from server.db.engine import make_engine
from server.resources import migrations_dir

log = logging.getLogger(__name__)

PG_LOCK_KEY = 0x63686174  # "chat": one advisory lock for every chat-server migrating this database


def alembic_config() -> Config:
    """The migrations shipped in the package, from whatever directory `chat-server` starts in.
    No ini file: alembic.ini at the top of the repository is for running `alembic` by hand."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


@contextlib.contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """SQLite: an exclusive lock on a file beside the database, held while migrating."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".migrate-lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _upgrade(connection: Connection, cfg: Config) -> str | None:
    if connection.dialect.name == "postgresql":
        # Held until this transaction ends: a second process waits here, then finds head.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
    before = MigrationContext.configure(connection).get_current_revision()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
    return before


async def upgrade_to_head(settings: Settings) -> None:
    cfg = alembic_config()
    engine = make_engine(settings, pooled=False)
    try:
        with _file_lock(settings.sqlite_path):
            async with engine.begin() as conn:
                before = await conn.run_sync(_upgrade, cfg)
    finally:
        await engine.dispose()
    head = head_revision()
    if before != head:
        log.info("schema migrated from %s to %s", before or "empty", head)
    else:
        log.info("schema is up to date at %s", head)


def migrate(settings: Settings) -> None:
    asyncio.run(upgrade_to_head(settings))
