"""Starting up: concurrent starts on one fresh database, `chat-server migrate` from anywhere, the
default database location, SQLite's durability settings, and configuration from ./.env.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import threading
from pathlib import Path

from support.client import Client
from support.servers import PG_ADMIN_URL, VENV_BIN, ServerProcess

TABLES = {"conversations", "messages", "server_secrets", "alembic_version"}


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any CHAT_* (or OPENAI_*) setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "OPENAI_", "PYTEST_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run(args: list[str], cwd: Path | str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def head_revision() -> str:
    from server.db.migrate import head_revision as head

    revision = head()
    assert revision
    return revision


def schema_state(db_url: str) -> tuple[set[str], list[str]]:
    """The tables of the database and the rows of alembic_version."""
    if db_url.startswith("sqlite"):
        path = Path(db_url.split("///", 1)[1])
        if not path.exists():
            return set(), []
        with sqlite3.connect(path) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            versions = [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")] \
                if "alembic_version" in tables else []
        return tables, versions
    return asyncio.run(_pg_schema_state(db_url.rsplit("/", 1)[1]))


async def _pg_schema_state(dbname: str) -> tuple[set[str], list[str]]:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname, timeout=5)
    try:
        tables = {r[0] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
        versions = [r[0] for r in await conn.fetch("SELECT version_num FROM alembic_version")] \
            if "alembic_version" in tables else []
        return tables, versions
    finally:
        await conn.close()


def assert_at_head(db_url: str) -> None:
    tables, versions = schema_state(db_url)
    assert TABLES <= tables, tables
    assert versions == [head_revision()]


async def serves_a_turn(server: ServerProcess, content: str) -> None:
    c = await Client.open(server)
    try:
        t = await c.complete(content)
        assert t.done["content"] == "You said: " + content
    finally:
        await c.close()


# -- several processes, one fresh database ---------------------------------------------------------
def test_two_servers_starting_at_once_on_a_fresh_database_both_serve(db, make_server, tmp_path):
    first = make_server(db, start=False)
    (tmp_path / "second").mkdir()
    second = ServerProcess(first.db_url, {}, tmp_path / "second")
    try:
        barrier = threading.Barrier(2)
        failures: list[BaseException] = []

        def start(server: ServerProcess) -> None:
            barrier.wait()
            try:
                server.start(timeout=60)
            except BaseException as e:  # reported below, with the server's log
                failures.append(e)

        threads = [threading.Thread(target=start, args=(s,)) for s in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert_at_head(first.db_url)

        # At head already: migrating again changes nothing and succeeds.
        r = run([str(VENV_BIN / "chat-server"), "migrate"], tmp_path, clean_env(CHAT_DATABASE_URL=first.db_url))
        assert r.returncode == 0, r.stderr
        assert_at_head(first.db_url)

        async def both() -> None:
            await asyncio.gather(serves_a_turn(first, "to the first"), serves_a_turn(second, "to the second"))

        asyncio.run(both())
    finally:
        second.kill()


# -- chat-server migrate ---------------------------------------------------------------------------
def test_migrate_creates_the_schema_from_any_working_directory(db, databases):
    url = databases.url(db)
    assert schema_state(url) == (set(), [])
    r = run([str(VENV_BIN / "chat-server"), "migrate"], "/", clean_env(CHAT_DATABASE_URL=url))
    assert r.returncode == 0, r.stderr
    assert_at_head(url)


def test_python_dash_m_server_migrate_works_too(db, databases):
    url = databases.url(db)
    r = run([str(VENV_BIN / "python"), "-m", "server", "migrate"], "/", clean_env(CHAT_DATABASE_URL=url))
    assert r.returncode == 0, r.stderr
    assert_at_head(url)


def test_default_database_is_data_chat_db_in_the_working_directory(tmp_path):
    r = run([str(VENV_BIN / "chat-server"), "migrate"], tmp_path, clean_env())
    assert r.returncode == 0, r.stderr
    path = tmp_path / "data" / "chat.db"
    assert path.is_file()
    assert_at_head(f"sqlite+aiosqlite:///{path}")


# -- SQLite durability ------------------------------------------------------------------------------
def test_sqlite_database_is_in_wal_mode_after_the_server_ran(session_servers):
    server = session_servers("sqlite")
    asyncio.run(serves_a_turn(server, "write something"))
    path = server.db_url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_connections_sync_fully_by_default_and_wait_when_busy(tmp_path, monkeypatch):
    from server.config import Settings
    from server.db.engine import make_engine

    async def pragmas() -> tuple[int, int, str]:
        engine = make_engine(Settings())
        try:
            async with engine.connect() as conn:
                values = [(await conn.exec_driver_sql(f"PRAGMA {p}")).scalar()
                          for p in ("synchronous", "busy_timeout", "journal_mode")]
        finally:
            await engine.dispose()
        return values[0], values[1], values[2]

    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in [k for k in os.environ if k.startswith("CHAT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CHAT_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}")
    synchronous, busy_timeout, journal = asyncio.run(pragmas())
    assert synchronous == 2 and busy_timeout > 0 and journal == "wal"  # 2 = FULL

    monkeypatch.setenv("CHAT_SQLITE_SYNCHRONOUS", "NORMAL")
    assert asyncio.run(pragmas())[0] == 1  # 1 = NORMAL


# -- configuration from ./.env ----------------------------------------------------------------------
class DotenvServer(ServerProcess):
    """chat-server started with no CHAT_* variable at all: everything comes from its cwd's .env."""

    def full_env(self) -> dict[str, str]:
        return clean_env()


def test_settings_come_from_a_dotenv_file_in_the_working_directory(tmp_path):
    workdir, db_path = tmp_path / "cwd", tmp_path / "elsewhere" / "chat.db"
    workdir.mkdir()
    (workdir / ".env").write_text(
        f"CHAT_MAX_MESSAGE_CHARS=20\nCHAT_DATABASE_URL=sqlite+aiosqlite:///{db_path}\nCHAT_ECHO_DELAY_MS=0\n")
    server = DotenvServer(f"sqlite+aiosqlite:///{db_path}", {}, workdir)
    try:
        server.start()
        asyncio.run(limit_is_twenty(server))
    finally:
        server.kill()
    assert_at_head(f"sqlite+aiosqlite:///{db_path}")  # the .env's database, not ./data/chat.db
    assert not (workdir / "data").exists()


async def limit_is_twenty(server: ServerProcess) -> None:
    c = await Client.open(server)
    try:
        await c.message("x" * 21, client_id="too-long")
        err = await c.expect_error("too_large")
        assert err["client_id"] == "too-long"
        t = await c.complete("y" * 20)
        assert t.ack["duplicate"] is False
    finally:
        await c.close()
