"""The SQLite file holds the open-mode signing secret: nobody but the server's user may read it."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

from support.client import Client, aio
from support.servers import ServerProcess


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@aio
async def test_the_data_directory_is_0700_and_the_database_files_0600(tmp_root):
    data = Path(tempfile.mkdtemp(dir=tmp_root)) / "data"
    db = data / "chat.db"
    server = ServerProcess(f"sqlite+aiosqlite:///{db}", workdir=data.parent).start()
    try:
        c = await Client.open(server)
        await c.complete("hello")  # the WAL is written
        await c.close()
        assert mode(data) == 0o700
        for p in (db, db.with_name("chat.db-wal"), db.with_name("chat.db-shm")):
            assert p.exists() and mode(p) == 0o600, (p, oct(mode(p)))
    finally:
        server.kill()


@aio
async def test_a_world_readable_database_of_an_older_version_is_made_private(tmp_root):
    data = Path(tempfile.mkdtemp(dir=tmp_root))
    db = data / "chat.db"
    server = ServerProcess(f"sqlite+aiosqlite:///{db}", workdir=data).start()
    server.kill()
    db.chmod(0o644)
    server.start()
    try:
        assert mode(db) == 0o600
    finally:
        server.kill()
