"""A task that does one thing every few seconds until it is stopped, whatever one round raises."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from server.db.errors import DatabaseUnavailable

log = logging.getLogger(__name__)


class Periodic:
    """Runs `tick` every `every_s` seconds (the first after a wait) until `stop`. A round that
    fails is logged and the next one tries again: the database may be back by then."""

    what = "a periodic round"  # for the log

    def __init__(self, every_s: float):
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def tick(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.tick()
            except DatabaseUnavailable:
                log.warning("%s failed; trying again in %.1fs", self.what, self.every_s)
            except Exception:
                log.exception("%s failed", self.what)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
