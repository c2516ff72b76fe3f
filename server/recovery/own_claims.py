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

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from server import metrics
from server.db.store import Store
from server.db.uow import Database
from server.domain import Orphan, utcnow
from server.recovery.periodic import Periodic

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


class OwnClaims(Periodic):
    """Runs `sweep_own` every `every_s` until closed."""

    what = "the sweep of this process's own claims"

    def __init__(self, db: Database, owner: str, running: Callable[[str], bool],
                 on_swept: Callable[[list[Orphan]], Awaitable[None]], every_s: float = 5.0):
        super().__init__(every_s)
        self.db, self.owner, self.running, self.on_swept = db, owner, running, on_swept

    async def tick(self) -> None:
        swept = await sweep_own(self.db, self.owner, self.running)
        if swept:
            await self.on_swept(swept)

    async def close(self) -> None:
        await self.stop()
