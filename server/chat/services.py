"""What every socket and request shares: settings, database, reply bus, hub, backend, authenticator.

A plain container: server/bootstrap.py builds it and chooses its adapters; everything else only
uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from server.auth import Authenticator
from server.chat.backends import Backend
from server.chat.checkpoints import ReplyCheckpoints
from server.chat.hub import Hub
from server.chat.limits import UserLimits
from server.chat.models import ModelCatalog
from server.chat.producer import ReplyDeps
from server.chat.titles import Titler
from server.config import Settings
from server.db.uow import Database
from server.recovery.own_claims import OwnClaims
from server.recovery.sweep import Heartbeat
from server.replies.ports import ReplyBus


@dataclass
class Services:
    settings: Settings
    db: Database
    bus: ReplyBus
    hub: Hub
    backend: Backend
    auth: Authenticator
    limits: UserLimits
    owner: str  # this process incarnation: recorded with every reply it generates
    titler: Titler
    models: ModelCatalog
    checkpoints: ReplyCheckpoints
    heartbeat: Heartbeat | None = None  # PostgreSQL: this process's lease
    own_claims: OwnClaims | None = None  # stores the claims this process holds but no longer runs

    @cached_property
    def reply_deps(self) -> ReplyDeps:
        """Built once, not per socket (every session's turn runner holds it)."""
        return ReplyDeps(self.db, self.bus, self.backend, self.settings, self.checkpoints,
                         self.titler.after_reply)

    async def close(self) -> None:
        await self.titler.close()
        await self.checkpoints.close()
        if self.own_claims is not None:
            await self.own_claims.close()
        await self.bus.close()
        if self.heartbeat is not None:
            await self.heartbeat.close()  # the lease goes at once: nothing of ours is left to sweep
        await self.backend.aclose()
        await self.db.dispose()
