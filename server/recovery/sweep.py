"""After a crash: every acknowledged message ends with a stored reply.

A user message and the record of its reply in flight are committed together, and the record
goes when the reply is stored. What a process left behind when it died (kill -9, power loss) is
therefore exactly the records of owners that are not alive: each is stored as an `interrupted`
reply, with the text its last checkpoint saw (often empty).

- SQLite (one process): at start, every owner but this incarnation.
- PostgreSQL: the owners without a live lease (server/recovery/leases.py), at start and then every
  `heartbeat_s` by every live process, so that a death is handled within about `lease_grace_s`
  (its session left PostgreSQL) or `lease_s` (it hung, or its host went away) plus a sweep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from server import metrics
from server.db.store import Store
from server.db.uow import Database, DatabaseUnavailable
from server.domain import Orphan
from server.recovery import leases
from server.recovery.periodic import Periodic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaseTimes:
    lease_s: float  # a lease not renewed for this long is dead
    heartbeat_s: float  # how often a process renews its lease (and sweeps)
    grace_s: float  # a dead named session counts once its heartbeat is this old
    named_session: bool  # this process keeps a named session (its LISTEN connection)


async def sweep_orphans(db: Database, live_owner: str) -> int:
    """One process: store the replies of every owner but `live_owner` as interrupted; how many."""
    return len(await sweep_dead(db, live_owner))


async def sweep_dead(db: Database, live_owner: str, times: LeaseTimes | None = None) -> list[Orphan]:
    """Store the replies of dead owners as interrupted; the ones stored. `times` None: SQLite's
    rule (every owner but `live_owner` is dead), else the owners without a live lease."""

    def work(store: Store) -> list[Orphan]:
        if times is None:
            found = store.orphans(live_owner)
        else:
            found = leases.orphans(store, live_owner, times.grace_s)
            leases.forget_dead(store, live_owner, times.grace_s)
        for orphan in found:
            store.store_orphan(orphan)
        return found

    swept = await db.write(work)
    if swept:
        metrics.REPLIES_SWEPT.inc(len(swept))
        log.warning("stored %d reply(ies) left in flight by a process that died as interrupted", len(swept))
    return swept


async def sweep_at_start(db: Database, owner: str, times: LeaseTimes) -> list[Orphan]:
    """Write this process's lease, then sweep. A process that died just now (a restart after
    kill -9) may still look alive for `grace_s`: wait that out, so that a restart stores what its
    previous incarnation left before it takes its first socket."""
    await db.write(lambda store: leases.renew(store, owner, times.lease_s, times.named_session))
    swept = await sweep_dead(db, owner, times)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + times.grace_s + 1
    while loop.time() < deadline and await db.read(lambda store: leases.suspects(store, owner, times.grace_s) > 0):
        await asyncio.sleep(0.25)
        swept += await sweep_dead(db, owner, times)
    swept += await sweep_dead(db, owner, times)
    return swept


class Heartbeat(Periodic):
    """Renews this process's lease and sweeps the dead ones', every `heartbeat_s`, until closed;
    then removes the lease at once (a clean exit leaves nothing for others to sweep)."""

    what = "lease renewal or sweep"

    def __init__(self, db: Database, owner: str, times: LeaseTimes,
                 on_swept: Callable[[list[Orphan]], Awaitable[None]]):
        super().__init__(times.heartbeat_s)
        self.db, self.owner, self.times, self.on_swept = db, owner, times, on_swept

    async def tick(self) -> None:
        times = self.times
        await self.db.write(lambda store: leases.renew(store, self.owner, times.lease_s, times.named_session))
        swept = await sweep_dead(self.db, self.owner, times)
        if swept:
            await self.on_swept(swept)

    async def close(self) -> None:
        await self.stop()
        try:
            await self.db.write(lambda store: leases.release(store, self.owner))
        except DatabaseUnavailable:
            log.warning("lease not removed at exit; it runs out in %.0fs", self.times.lease_s)
