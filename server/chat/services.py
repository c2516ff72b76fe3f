"""What every socket and request shares: settings, database, hub, backend, authenticator."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from server import metrics
from server.auth import OPEN_MODE_SECRET_NAME, Authenticator
from server.chat.backends import Backend, make_backend
from server.chat.hub import Hub
from server.chat.limits import UserLimits
from server.config import Settings
from server.db.engine import make_engine
from server.db.sqlite_writer import SqliteWriter
from server.db.uow import Database


@dataclass
class Services:
    settings: Settings
    db: Database
    hub: Hub
    backend: Backend
    auth: Authenticator
    limits: UserLimits

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        writer = None
        if settings.is_sqlite:
            writer = SqliteWriter(settings)
            await writer.start()
        db = Database(make_engine(settings), writer)
        metrics.DB_POOL_CHECKED_OUT.set_function(db.checked_out)
        if settings.token_mode:
            assert settings.auth_secret is not None
            auth = Authenticator(settings.auth_secret.get_secret_value(), token_mode=True)
        else:
            auth = Authenticator(await open_mode_secret(db), token_mode=False)
        limits = UserLimits(settings.rate_limit_per_minute, settings.max_sockets_per_user)
        return cls(settings, db, Hub(), make_backend(settings), auth, limits)

    async def close(self) -> None:
        await self.backend.aclose()
        await self.db.dispose()


async def open_mode_secret(db: Database) -> str:
    """Generated once and kept in the database, so minted tokens stay valid across restarts."""
    for attempt in range(2):
        try:
            return await db.write(
                lambda store: store.get_or_create_secret(OPEN_MODE_SECRET_NAME, Authenticator.new_secret()))
        except IntegrityError:  # another process stored it first: read theirs
            if attempt == 1:
                raise
    raise AssertionError("unreachable")
