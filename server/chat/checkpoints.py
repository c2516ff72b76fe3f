"""The text so far of this process's long replies, kept in their records in flight for the crash
sweep: a reply that has streamed for `reply_checkpoint_s` gets its text written, and again every
`reply_checkpoint_s` while it streams, so that a `kill -9` stores what the person saw.

All the replies due are written in one unit of work per round (a round every second, or every
`reply_checkpoint_s` if shorter), not one unit per reply: with a thousand long replies streaming,
one write a second instead of two hundred (each a transaction and, on PostgreSQL, a pool checkout
and three round trips on the event loop). A round's write is off every producer's path; a
failed one is logged, and its replies are written again when next due. Short replies never write.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from server.db.store import Store
from server.db.uow import Database
from server.recovery.periodic import Periodic
from server.replies.reply import LiveReply

ROUND_S = 1.0  # at most; a reply's stored text is at most reply_checkpoint_s + this old


@dataclass(eq=False, slots=True)
class _Tracked:
    reply: LiveReply
    due: float  # monotonic
    written: int = 0  # the seq its stored text ends at


class ReplyCheckpoints(Periodic):
    what = "the checkpoint of long replies"

    def __init__(self, db: Database, interval_s: float):
        super().__init__(min(interval_s, ROUND_S))
        self.db = db
        self.interval_s = interval_s
        self._tracked: dict[str, _Tracked] = {}  # by reply id

    def __len__(self) -> int:
        """How many replies are tracked."""
        return len(self._tracked)

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def start(self) -> None:
        if self.enabled:
            super().start()

    def track(self, reply: LiveReply) -> None:
        """`reply` is being generated here: its first checkpoint is due in `reply_checkpoint_s`."""
        if self.enabled:
            self._tracked[reply.id] = _Tracked(reply, time.monotonic() + self.interval_s)

    def forget(self, reply: LiveReply) -> None:
        """`reply` ended (it is about to be stored): no more checkpoints."""
        self._tracked.pop(reply.id, None)

    def take_due(self) -> list[tuple[_Tracked, str]]:
        """Each reply due with text not yet written, and that text; they count as written from now."""
        now = time.monotonic()
        due = []
        for tracked in self._tracked.values():
            reply = tracked.reply
            if tracked.due <= now and reply.seq > tracked.written:
                due.append((tracked, reply.content))
                tracked.due, tracked.written = now + self.interval_s, reply.seq
        # In the order of the turn writes' batches (pg_turn_writes.py), so that a round and a
        # batch that stores one of these replies take their row locks in one order.
        due.sort(key=lambda item: item[0].reply.conversation_id)
        return due

    async def tick(self) -> None:
        due = self.take_due()
        if not due:
            return
        rows = [(tracked.reply.reply_to, tracked.reply.id, text) for tracked, text in due]

        def work(store: Store) -> None:
            store.checkpoint_replies(rows)

        try:
            await self.db.write(work)
        except BaseException:
            for tracked, _ in due:
                tracked.written = 0  # not written: the round that finds it due again writes it
            raise

    async def close(self) -> None:
        await self.stop()
        self._tracked.clear()
