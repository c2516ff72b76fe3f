"""Fixtures: real chat-server processes on SQLite and on PostgreSQL.

Every end-to-end test that takes `db` (or a server built from it) runs once per database.
PostgreSQL tests skip with a reason when it is unreachable, unless CHAT_TEST_REQUIRE_PG=1
(CI sets it), in which case they fail.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.servers import ServerProcess, create_pg_database, drop_pg_database, pg_unavailable_reason

# 50+ sockets per test and a server inheriting the limit: more than 1024 descriptors.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(_hard, 65536), _hard))

_pg_reason: list[str | None] = []


def _require_pg() -> None:
    if not _pg_reason:
        _pg_reason.append(pg_unavailable_reason())
    if _pg_reason[0] is not None:
        if os.environ.get("CHAT_TEST_REQUIRE_PG") == "1":
            pytest.fail(_pg_reason[0] + " (CHAT_TEST_REQUIRE_PG=1)", pytrace=False)
        pytest.skip(_pg_reason[0])


class Databases:
    """Fresh databases, dropped at the end."""

    def __init__(self, root: Path):
        self.root = root
        self.pg_names: list[str] = []

    def url(self, kind: str) -> str:
        if kind == "postgres":
            _require_pg()
            name, url = create_pg_database()
            self.pg_names.append(name)
            return url
        path = Path(tempfile.mkdtemp(prefix="db-", dir=self.root)) / "chat.db"
        return f"sqlite+aiosqlite:///{path}"

    def cleanup(self) -> None:
        for name in self.pg_names:
            drop_pg_database(name)


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="chat-tests-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def databases(tmp_root: Path) -> Iterator[Databases]:
    dbs = Databases(tmp_root)
    yield dbs
    dbs.cleanup()


@pytest.fixture
def pg() -> None:
    """For a test that is about PostgreSQL alone: skips with the reason when it is unreachable
    (fails instead under CHAT_TEST_REQUIRE_PG=1, as in CI)."""
    _require_pg()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest) -> str:
    """The kind of database the test runs on."""
    if request.param == "postgres":
        _require_pg()
    return request.param


ServerFactory = Callable[..., ServerProcess]


def _factory(databases: Databases, tmp_root: Path, servers: list[ServerProcess]) -> ServerFactory:
    def make(db: str, start: bool = True, **env: object) -> ServerProcess:
        workdir = Path(tempfile.mkdtemp(prefix="srv-", dir=tmp_root))
        server = ServerProcess(databases.url(db), {k: str(v) for k, v in env.items()}, workdir)
        servers.append(server)
        return server.start() if start else server

    return make


@pytest.fixture
def make_server(databases: Databases, tmp_root: Path, request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """A server owned by one test: make_server(db, CHAT_X=...)."""
    servers: list[ServerProcess] = []
    yield _factory(databases, tmp_root, servers)
    for s in servers:
        if getattr(request.node, "rep_call_failed", False):
            print(f"--- log of {s.db_url} ---\n{s.log_tail(60)}")
        s.kill()


@pytest.fixture(scope="session")
def session_servers(databases: Databases, tmp_root: Path) -> Iterator[ServerFactory]:
    servers: list[ServerProcess] = []
    cache: dict[tuple, ServerProcess] = {}
    make = _factory(databases, tmp_root, servers)

    def shared(db: str, **env: object) -> ServerProcess:
        key = (db, tuple(sorted(env.items())))
        if key not in cache:
            cache[key] = make(db, **env)
        return cache[key]

    yield shared
    for s in servers:
        s.kill()


@pytest.fixture
def server(db: str, session_servers: ServerFactory) -> ServerProcess:
    """A shared server per database: echo without delay."""
    return session_servers(db)


@pytest.fixture
def slow_server(db: str, session_servers: ServerFactory) -> ServerProcess:
    """A shared server per database whose echo pauses 50 ms before each delta."""
    return session_servers(db, CHAT_ECHO_DELAY_MS=50)


@pytest.fixture
def pair(make_server: ServerFactory, tmp_root: Path,
         request: pytest.FixtureRequest) -> Iterator[Callable[..., tuple[ServerProcess, ServerProcess]]]:
    """pair(**env): two processes on one fresh PostgreSQL database (skipped, with the reason, without it)."""
    extra: list[ServerProcess] = []

    def make(**env: object) -> tuple[ServerProcess, ServerProcess]:
        a = make_server("postgres", **env)
        b = ServerProcess(a.db_url, {k: str(v) for k, v in env.items()},
                          Path(tempfile.mkdtemp(prefix="srv-b-", dir=tmp_root)))
        extra.append(b)
        return a, b.start()

    yield make
    for s in extra:
        if getattr(request.node, "rep_call_failed", False):
            print(f"--- log of the second process ---\n{s.log_tail(60)}")
        s.kill()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call" and report.failed:
        item.rep_call_failed = True  # type: ignore[attr-defined]
    return report
