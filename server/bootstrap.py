"""The wiring: the one place that builds the server's parts and chooses their adapters.

SQLite gets the group-committing writer thread and the in-memory reply bus; PostgreSQL gets the
turn writes on asyncpg, process leases with their sweep, and (with CHAT_PG_NOTIFY) the reply bus
across processes. Nothing else in the server chooses one: the rest is handed what was built here.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy.exc import IntegrityError

from server import metrics
from server.auth import OPEN_MODE_SECRET_NAME, Authenticator
from server.chat.backends import make_backend
from server.chat.checkpoints import ReplyCheckpoints
from server.chat.hub import Hub
from server.chat.limits import UserLimits
from server.chat.models import ModelCatalog
from server.chat.services import Services
from server.chat.titles import Titler
from server.config import Settings
from server.db.engine import make_engine
from server.db.pg_turn_writes import PgTurnWrites
from server.db.sqlite_writer import SqliteWriter
from server.db.uow import Database
from server.domain import Orphan
from server.recovery.own_claims import OwnClaims
from server.recovery.sweep import Heartbeat, LeaseTimes, sweep_at_start, sweep_orphans
from server.replies.local import LocalReplyBus
from server.replies.ports import ReplyBus
from server.replies.postgres.bus import PgReplyBus


async def start_services(settings: Settings) -> Services:
    """Open the database, choose the reply bus for it, sweep what dead processes left, and
    hand everything to the rest of the server as one `Services`."""
    writer = None
    if settings.is_sqlite:
        writer = SqliteWriter(settings)
        await writer.start()
    turn_writes = None if settings.is_sqlite else await PgTurnWrites.open(settings)
    db = Database(make_engine(settings), writer, turn_writes)
    metrics.DB_POOL_CHECKED_OUT.set_function(db.checked_out)
    if settings.token_mode:
        assert settings.auth_secret is not None
        auth = Authenticator(settings.auth_secret.get_secret_value(), token_mode=True)
    else:
        auth = Authenticator(await open_mode_secret(db), token_mode=False,
                             open_mode_ttl_s=settings.open_mode_token_ttl_s)
    limits = UserLimits(settings.rate_limit_per_minute, settings.max_sockets_per_user,
                        reads_per_minute=settings.reads_per_minute)
    owner = uuid.uuid4().hex
    bus: ReplyBus
    heartbeat = None
    on_swept: Callable[[list[Orphan]], Awaitable[None]] = _nothing
    if settings.is_sqlite:
        # One process: what any other incarnation left in flight is stored as interrupted
        # before the first socket.
        await sweep_orphans(db, owner)
        bus = LocalReplyBus(settings.detached_reply_s, settings.max_detached_replies)
    else:
        bus, heartbeat, on_swept = await _start_many_processes(settings, db, owner)
    own_claims = OwnClaims(db, owner, bus.running, on_swept)
    own_claims.start()
    checkpoints = ReplyCheckpoints(db, settings.reply_checkpoint_s)
    checkpoints.start()
    backend = make_backend(settings)
    return Services(settings, db, bus, Hub(bus), backend, auth, limits, owner,
                    Titler(db, backend, bus, settings), ModelCatalog(backend, settings), checkpoints,
                    heartbeat, own_claims)


async def _start_many_processes(
        settings: Settings, db: Database, owner: str,
) -> tuple[ReplyBus, Heartbeat, Callable[[list[Orphan]], Awaitable[None]]]:
    """PostgreSQL: this process's lease, the sweep of dead processes' replies, and (pg_notify)
    the reply seam across processes. The LISTEN connection opens before the lease is written,
    so that other processes see this one's session as soon as they see its lease."""
    times = LeaseTimes(settings.lease_s, settings.heartbeat_s, settings.lease_grace_s, settings.pg_notify)
    bus: ReplyBus
    on_swept: Callable[[list[Orphan]], Awaitable[None]]
    if settings.pg_notify:
        pg_bus = PgReplyBus(settings.detached_reply_s, settings.max_detached_replies, db, owner)
        await pg_bus.start(settings.database_url, settings.notify_tick_ms / 1000, settings.db_connect_timeout_s)
        bus, on_swept = pg_bus, pg_bus.swept
    else:
        bus, on_swept = LocalReplyBus(settings.detached_reply_s, settings.max_detached_replies), _nothing
    swept = await sweep_at_start(db, owner, times)
    if swept:
        await on_swept(swept)
    heartbeat = Heartbeat(db, owner, times, on_swept)
    heartbeat.start()
    return bus, heartbeat, on_swept


async def _nothing(_swept: list[Orphan]) -> None:
    return None


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
