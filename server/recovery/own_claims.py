"""A claim this process holds but no longer runs is stored as `interrupted`, by this process.

A reply whose store failed (the database was unavailable through every retry, or a bug raised)
leaves its claim in `replies_in_flight` with a live owner, and a resend of an interrupted message
can race a DELETE. No sweep of dead processes takes such a claim, since its owner is alive: the
acknowledged message would never get its stored reply, and the claim would be listed in
`ready.replies_in_flight` (and followed by other processes) until the process exits. Every
`every_s`, this process stores each of its own claims that it does not generate as an
`interrupted` reply (a conversation gone meanwhile: the claim is only released), and tells whoever
follows it, as the crash sweep does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from server import metrics
from server.db.errors import DatabaseUnavailable
from server.db.store import Store
from server.db.uow import Database
from server.domain import Orphan, utcnow

log = logging.getLogger(__name__)

# A claim is committed a moment before its reply is registered in the bus (the commit's await):
# one younger than this is never taken for a claim the process no longer runs.
MIN_AGE_S = 10.0


async def sweep_own(db: Database, owner: str, running: Callable[[str], bool],
                    min_age_s: float = MIN_AGE_S) -> list[Orphan]:
    """Store as interrupted `owner`'s claims whose reply is not running here; the ones stored."""
    started_before = utcnow() - timedelta(seconds=min_age_s)
    found = await db.read(lambda store: store.own_claims(owner, started_before))
    if not [orphan for orphan in found if not running(orphan.reply_id)]:
        return []

    def work(store: Store) -> list[Orphan]:
        swept = []
        for orphan in found:
            # Asked again (on SQLite from the writer's thread: a dict lookup): it may have been
            # registered since the read.
            if running(orphan.reply_id):
                continue
            # Only while the claim is still ours: a reply stored meanwhile removed it, and so did
            # a takeover; either way there is nothing to store.
            released = store.release_claim(orphan, owner)
            if released is not None:
                store.store_orphan(released)
                swept.append(released)
        return swept

    swept = await db.write(work)
    if swept:
        metrics.REPLIES_SWEPT.inc(len(swept))
        log.warning("stored %d reply(ies) this process no longer generates as interrupted", len(swept))
    return swept


class OwnClaims:
    """Runs `sweep_own` every `every_s` until closed."""

    def __init__(self, db: Database, owner: str, running: Callable[[str], bool],
                 on_swept: Callable[[list[Orphan]], Awaitable[None]], every_s: float = 5.0):
        self.db, self.owner, self.running, self.on_swept, self.every_s = db, owner, running, on_swept, every_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                swept = await sweep_own(self.db, self.owner, self.running)
                if swept:
                    await self.on_swept(swept)
            except DatabaseUnavailable:
                log.warning("the sweep of this process's own claims failed; trying again in %.1fs", self.every_s)
            except Exception:
                log.exception("the sweep of this process's own claims failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
