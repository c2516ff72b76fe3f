"""After a crash: every acknowledged message ends with a stored reply.

A user message and the record of its reply in flight are committed together, and the record
goes when the reply is stored. What a process left behind when it died (kill -9, power loss) is
therefore exactly the records of owners that are not alive: each is stored as an `interrupted`
reply, with the text its last checkpoint saw (often empty). One process: at start, every owner
but this incarnation. Many processes: the owners whose lease has lapsed.
"""

from __future__ import annotations

import logging

from server import metrics
from server.db.store import Store
from server.db.uow import Database

log = logging.getLogger(__name__)


async def sweep_orphans(db: Database, live_owner: str) -> int:
    """Store the replies of dead owners as interrupted; how many there were."""

    def work(store: Store) -> int:
        orphans = store.orphans(live_owner)
        for orphan in orphans:
            store.store_orphan(orphan)
        return len(orphans)

    swept = await db.write(work)
    if swept:
        metrics.REPLIES_SWEPT.inc(swept)
        log.warning("stored %d reply(ies) left in flight by a process that died as interrupted", swept)
    return swept
