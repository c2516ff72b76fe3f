"""In-process tests: no server process, no socket. The turn path runs on the real turn runner,
reply bus and database (a temporary SQLite file, migrated), with a fake socket and a model the test
steps piece by piece: each test takes milliseconds. Alongside: the database layer (statements,
migrations, leases) and the reply bus across processes, on real SQLite and PostgreSQL databases
(PostgreSQL ones skip without it, or fail under CHAT_TEST_REQUIRE_PG=1)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from support.inprocess import Harness, SteppedModel

from server.bootstrap import start_services
from server.config import Settings
from server.db.migrate import upgrade_to_head


@pytest.fixture
def harness(tmp_path: Path) -> Callable[..., Any]:
    """harness(pieces=10, **settings): an async context manager giving a Harness."""

    def make(pieces: int = 10, **settings: Any) -> Any:
        @contextlib.asynccontextmanager
        async def running() -> AsyncIterator[Harness]:
            cfg = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/chat.db", echo_delay_ms=0, **settings)
            await upgrade_to_head(cfg)
            svc = await start_services(cfg)
            model = SteppedModel(pieces)
            svc.backend = model
            try:
                yield Harness(svc, model)
            finally:
                await svc.bus.shut_down(5)
                await svc.close()

        return running()

    return make
