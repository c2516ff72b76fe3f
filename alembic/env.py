"""Alembic environment, async. Two ways in:

- from the server (`server.db.migrate`): a connection arrives in `config.attributes`, already
  inside a transaction that holds the migration lock;
- from the `alembic` command line: the URL comes from the server's Settings (CHAT_DATABASE_URL).
"""

import asyncio

from sqlalchemy.engine import Connection

from alembic import context
from server.config import Settings
from server.db import search_index
from server.db.engine import make_engine
from server.db.schema import metadata

config = context.config


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=lambda obj, name, type_, reflected, compare_to: not search_index.is_search_object(name),
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine() -> None:
    engine = make_engine(Settings(), pooled=False)
    async with engine.begin() as conn:
        await conn.run_sync(run_on)
    await engine.dispose()


def run_offline() -> None:
    context.configure(url=Settings().database_url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif (shared := config.attributes.get("connection")) is not None:
    run_on(shared)
else:
    asyncio.run(run_with_own_engine())
