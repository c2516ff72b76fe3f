"""The reply seam for one process: everything in memory.

`PgReplyBus` (postgres/bus.py) holds one of these for the replies its process generates, and
reaches it only through the public methods here: `get`, `watchers`, `detach`, `attach`, and the
`held_elsewhere` hook that keeps a reply followed from another process from being detached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from server import metrics
from server.domain import MessageRecord
from server.protocol import outgoing
from server.replies.follower import Follower
from server.replies.ports import Watcher
from server.replies.reply import LiveReply, Outcome
from server.replies.sink import Sink

log = logging.getLogger(__name__)


class LocalReplyBus:
    def __init__(self, detached_reply_s: float, max_detached_replies: int,
                 held_elsewhere: Callable[[LiveReply], bool] = lambda _reply: False):
        self.held_elsewhere = held_elsewhere  # followed by a socket of another process: not detached
        self.detached_reply_s = detached_reply_s
        self.max_detached_replies = max_detached_replies
        self.closing = False
        self._replies: dict[str, LiveReply] = {}  # by reply id
        self._by_message: dict[str, LiveReply] = {}  # by the user message it answers
        self._by_user: dict[str, list[LiveReply]] = {}
        self._detached: dict[str, int] = {}  # user -> detached replies
        self._watchers: dict[str, list[Watcher]] = {}

    # -- producing ---------------------------------------------------------------------------------
    def claim(self, user_id: str, message: MessageRecord, reply_id: str) -> LiveReply | None:
        if message.id in self._by_message:
            return None
        reply = LiveReply(reply_id, user_id, message.conversation_id, message.id)
        self._replies[reply_id] = reply
        self._by_message[message.id] = reply
        self._by_user.setdefault(user_id, []).append(reply)
        metrics.REPLIES_IN_FLIGHT.inc()
        if self.closing:  # claimed during shutdown: it ends at once, stored as interrupted
            reply.stop("interrupted")
        return reply

    def run(self, reply: LiveReply, producer: Coroutine[Any, Any, None]) -> None:
        reply.task = asyncio.ensure_future(producer)

    async def publish(self, reply: LiveReply, piece: str) -> None:
        reply.pieces.append(piece)
        for follower in reply.followers[:]:  # a follower that ends leaves the list
            await follower.pump()

    async def finish(self, reply: LiveReply, outcome: Outcome) -> None:
        reply.outcome = outcome
        self._forget(reply)
        for follower in list(reply.followers):
            await follower.pump()

    def _forget(self, reply: LiveReply) -> None:
        if self._replies.pop(reply.id, None) is None:
            return
        self._by_message.pop(reply.reply_to, None)
        mine = self._by_user.get(reply.user_id)
        if mine is not None:
            mine.remove(reply)
            if not mine:
                del self._by_user[reply.user_id]
        self.attach(reply)
        metrics.REPLIES_IN_FLIGHT.dec()

    # -- finding and following -----------------------------------------------------------------------
    def find(self, user_id: str, *, reply_id: str | None = None, reply_to: str | None = None) -> LiveReply | None:
        reply = self._replies.get(reply_id) if reply_id is not None else self._by_message.get(reply_to or "")
        return reply if reply is not None and reply.user_id == user_id else None

    def get(self, reply_id: str) -> LiveReply | None:
        """This process's reply in flight with that id, whoever's it is."""
        return self._replies.get(reply_id)

    def running(self, reply_id: str) -> bool:
        return reply_id in self._replies

    def in_flight(self, user_id: str) -> list[LiveReply]:
        return list(self._by_user.get(user_id, ()))

    async def locate(self, user_id: str, *, reply_id: str | None = None,
                     reply_to: str | None = None) -> LiveReply | None:
        return self.find(user_id, reply_id=reply_id, reply_to=reply_to)

    async def listing(self, user_id: str) -> list[dict[str, Any]]:
        return [reply.listing() for reply in self.in_flight(user_id)]

    def follow(self, reply: LiveReply, sink: Sink, after: int, *, preamble: dict[str, Any] | None = None,
               client_id: str | None = None, hold_interrupted: bool = False) -> Follower:
        follower = Follower(reply, sink, after, self._left, preamble=preamble, client_id=client_id,
                            hold_interrupted=hold_interrupted)
        reply.followers.append(follower)
        self.attach(reply)
        return follower

    def _left(self, follower: Follower) -> None:
        reply = follower.reply
        with contextlib.suppress(ValueError):
            reply.followers.remove(follower)
        if not reply.followers and reply.outcome is None:
            self.detach(reply)

    # -- detached replies ----------------------------------------------------------------------------
    def detach(self, reply: LiveReply) -> None:
        """No socket follows it any more: it goes on for detached_reply_s, within the user's quota."""
        if reply.detached or reply.stop_reason is not None or self.held_elsewhere(reply):
            return
        count = self._detached.get(reply.user_id, 0)
        if self.detached_reply_s <= 0 or count >= self.max_detached_replies or self.closing:
            reply.stop("interrupted")
            return
        self._detached[reply.user_id] = count + 1
        reply.detached = asyncio.get_running_loop().call_later(self.detached_reply_s, reply.stop, "interrupted")
        metrics.REPLIES_DETACHED.inc()

    def attach(self, reply: LiveReply) -> None:
        """Followed again (or finished): no longer detached."""
        if not reply.detached:
            return
        if isinstance(reply.detached, asyncio.TimerHandle):
            reply.detached.cancel()
        reply.detached = False
        count = self._detached.get(reply.user_id, 0) - 1
        if count > 0:
            self._detached[reply.user_id] = count
        else:
            self._detached.pop(reply.user_id, None)
        metrics.REPLIES_DETACHED.dec()

    # -- stopping ------------------------------------------------------------------------------------
    def stop(self, user_id: str, reply_id: str, reason: str) -> bool:
        reply = self.find(user_id, reply_id=reply_id)
        if reply is None:
            return False
        reply.stop(reason)
        return True

    def stop_conversation(self, conversation_id: str, reason: str) -> int:
        stopping = [r for r in self._replies.values() if r.conversation_id == conversation_id]
        for reply in stopping:
            reply.stop(reason)
        return len(stopping)

    async def shut_down(self, timeout_s: float) -> None:
        self.closing = True
        replies = list(self._replies.values())
        for reply in replies:
            reply.stop("interrupted")
        tasks = [r.task for r in replies if r.task is not None]
        if not tasks:
            return
        log.info("shutting down: stopping %d reply(ies) in flight", len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        if pending:
            log.error("%d reply(ies) were not stored within %.1fs", len(pending), timeout_s)

    async def close(self) -> None:
        return None

    def health(self) -> dict[str, str]:
        return {}

    # -- other tabs ----------------------------------------------------------------------------------
    def watchers(self, user_id: str) -> list[Watcher]:
        """The user's sync sockets in this process (a copy)."""
        return list(self._watchers.get(user_id, ()))

    def watch(self, user_id: str, watcher: Watcher) -> None:
        self._watchers.setdefault(user_id, []).append(watcher)

    def unwatch(self, user_id: str, watcher: Watcher) -> None:
        watchers = self._watchers.get(user_id)
        if watchers is not None and watcher in watchers:
            watchers.remove(watcher)
            if not watchers:
                del self._watchers[user_id]

    async def announce(self, message: MessageRecord, reply: LiveReply, origin: Sink, added: bool = True) -> None:
        watchers = self._watchers.get(reply.user_id)
        if not watchers:
            return
        preamble = outgoing.message_added(message) if added else None
        for watcher in list(watchers):
            if watcher.sink is origin:
                continue
            follower = self.follow(reply, watcher.sink, 0, preamble=preamble)
            watcher.adopt(follower)
            await follower.pump()

    def announce_selected(self, user_id: str, conversation_id: str, leaf_id: str, origin: Sink | None) -> None:
        frame = outgoing.selected(conversation_id, leaf_id)
        for watcher in list(self._watchers.get(user_id, ())):
            if watcher.sink is not origin:
                watcher.event(frame)

    def announce_deleted(self, user_id: str, conversation_id: str) -> None:
        self._tell(user_id, outgoing.conversation_deleted(conversation_id))

    def announce_updated(self, user_id: str, conversation: dict[str, Any]) -> None:
        self._tell(user_id, outgoing.conversation_updated(conversation))

    def _tell(self, user_id: str, frame: dict[str, Any]) -> None:
        for watcher in list(self._watchers.get(user_id, ())):
            watcher.event(frame)
