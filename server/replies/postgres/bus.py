"""The reply seam across processes: a LocalReplyBus for the replies this process generates, plus
LISTEN/NOTIFY (listen.py) for everything that crosses to another process (records.py).

- A reply generated elsewhere is seen here as a *mirror*: a LiveReply whose pieces come from
  notifications. A mirror exists only while a socket here follows it (a resume, a duplicate
  client_id, a ?sync=1 socket): its first follower sends the owner an INTEREST with the last seq
  known here; the owner then sends its pieces after that seq, coalesced once per tick, and the
  live ones, then FINISHED. Deltas cross processes only for such replies; every other turn costs
  one small ANNOUNCE record (ids only), sent with the others of its tick.
- Which replies exist, and who generates them, is read from replies_in_flight (the truth) on the
  rare paths that need it: a resume or duplicate of a reply not known here, `ready`.
- A gap (the LISTEN connection was lost, a PIECES record past what is known, or a mirror that
  heard nothing for a while) is never papered over: the mirror checks the database and asks its
  owner again from its last seq, or takes the stored reply.
- Stops (cancel by id, a DELETE) and sync events are broadcast; the process that has the reply
  or the socket acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from server.db import conversations
from server.db.uow import Database, DatabaseUnavailable
from server.domain import MessageRecord, Orphan, utcnow
from server.protocol import outgoing
from server.protocol.codes import ErrorCode
from server.recovery import leases
from server.replies.follower import Follower
from server.replies.local import LocalReplyBus
from server.replies.ports import Watcher
from server.replies.postgres import records as rec
from server.replies.postgres.listen import BROADCAST, ListenConnection, process_channel
from server.replies.reply import LiveReply, Outcome
from server.replies.sink import Sink

log = logging.getLogger(__name__)

STORED = ("complete", "cancelled", "error", "interrupted")
CHECK_AFTER_S = 5.0  # a mirror that heard nothing this long checks the database and asks again
RECENT_STOP_S = 2.0  # a cancel of the same id within this is not broadcast again
SEQ_ANSWER_S = 0.25  # how long `ready` waits for owners to say how far their replies are (a tick or two)
RECENT_STOPS = 1024  # remembered at most: past it, the ones older than RECENT_STOP_S go


@dataclass(eq=False, slots=True)
class Mirror:
    reply: LiveReply
    owner: str
    assembler: rec.Assembler
    heard: float = field(default_factory=time.monotonic)
    checking: bool = False
    said_gone: bool = False  # its owner said it does not generate it: ask again only after a quiet spell


class PgReplyBus:
    def __init__(self, detached_reply_s: float, max_detached_replies: int, db: Database, owner: str):
        # The replies generated here; one followed from another process is not detached.
        self.local = LocalReplyBus(detached_reply_s, max_detached_replies,
                                   held_elsewhere=lambda reply: bool(self._remote.get(reply.id)))
        self.db = db
        self.owner = owner
        self.channel: ListenConnection | None = None
        self._mirrors: dict[str, Mirror] = {}  # replies generated elsewhere, followed here
        self._remote: dict[str, dict[str, int]] = {}  # our reply -> {process: last seq sent to it}
        self._dirty: dict[str, LiveReply] = {}  # our replies with remote followers and something to send
        self._tasks: set[asyncio.Task[Any]] = set()
        self._checker: asyncio.Task[None] | None = None
        self._recent_stops: dict[tuple[str, str], float] = {}  # (user, reply id) -> when broadcast
        self._seq_answers: dict[str, list[asyncio.Future[int]]] = {}  # reply id -> who awaits its seq
        self._handlers: dict[type[rec.Record], Callable[[Any], None]] = {
            rec.Pieces: self._on_pieces, rec.Finished: self._on_finished, rec.Gone: self._on_gone,
            rec.Interest: self._on_interest, rec.Uninterest: self._on_uninterest, rec.Stop: self._on_stop,
            rec.StopConversation: self._on_stop_conversation, rec.Deleted: self._on_deleted,
            rec.Announce: self._on_announce, rec.SeqQuery: self._on_seq_query, rec.SeqAnswer: self._on_seq_answer,
            rec.Selected: self._on_selected, rec.Updated: self._on_updated,
        }
        self._updates_in_order = asyncio.Lock()

    async def start(self, database_url: str, tick_s: float, connect_timeout_s: float = 10.0) -> None:
        self.channel = ListenConnection(database_url, self.owner, tick_s, self._received, self._gap,
                                        connect_timeout_s=connect_timeout_s)
        self.channel.on_tick(self._flush_remote)
        await self.channel.start()
        self._checker = asyncio.ensure_future(self._check_quiet_mirrors())

    def _send(self, channel: str, record: rec.Record) -> None:
        if self.channel is not None:
            self.channel.send(channel, record)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what the local bus does alone --------------------------------------------------------------
    def claim(self, user_id: str, message: MessageRecord, reply_id: str) -> LiveReply | None:
        return self.local.claim(user_id, message, reply_id)

    def run(self, reply: LiveReply, producer: Coroutine[Any, Any, None]) -> None:
        self.local.run(reply, producer)

    def in_flight(self, user_id: str) -> list[LiveReply]:
        return self.local.in_flight(user_id)

    def running(self, reply_id: str) -> bool:
        return self.local.running(reply_id)

    def watch(self, user_id: str, watcher: Watcher) -> None:
        self.local.watch(user_id, watcher)

    def unwatch(self, user_id: str, watcher: Watcher) -> None:
        self.local.unwatch(user_id, watcher)

    # -- producing: what remote followers need ------------------------------------------------------
    async def publish(self, reply: LiveReply, piece: str) -> None:
        # LocalReplyBus.publish inlined (it touches only the reply): this runs once per delta of
        # every turn, and a coroutine call more per delta was measurable.
        reply.pieces.append(piece)
        for follower in reply.followers[:]:
            await follower.pump()
        if reply.id in self._remote:
            self._dirty[reply.id] = reply
            assert self.channel is not None
            self.channel.wake()

    async def finish(self, reply: LiveReply, outcome: Outcome) -> None:
        await self.local.finish(reply, outcome)
        if reply.id in self._remote:
            self._dirty[reply.id] = reply
            assert self.channel is not None
            self.channel.wake()

    def _flush_remote(self) -> None:
        """Once per tick: each remote follower's missing pieces, then the end, to its process."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        assert self.channel is not None
        for reply_id, reply in dirty.items():
            processes = self._remote.get(reply_id, {})
            for process, sent in processes.items():
                if reply.seq > sent:
                    self.channel.send_encoded(process_channel(process),
                                              rec.pieces_records(reply_id, sent + 1, reply.pieces[sent:]))
                    processes[process] = reply.seq
                if reply.outcome is not None:
                    self.channel.send(process_channel(process), _finished_record(reply, reply.outcome))
            if reply.outcome is not None:
                self._remote.pop(reply_id, None)

    # -- finding, following, listing --------------------------------------------------------------------
    async def locate(self, user_id: str, *, reply_id: str | None = None,
                     reply_to: str | None = None) -> LiveReply | None:
        reply = self.local.find(user_id, reply_id=reply_id, reply_to=reply_to)
        if reply is not None:
            return reply
        for mirror in self._mirrors.values():
            r = mirror.reply
            if r.user_id == user_id and (r.id == reply_id if reply_id is not None else r.reply_to == reply_to):
                return r
        found = await self.db.read(lambda store: leases.record(store, user_id, reply_id, reply_to))
        if found is None:
            return None
        rid, message_id, conversation_id, owner = found
        if owner == self.owner:
            return self.local.find(user_id, reply_id=rid)  # ours, and no longer in flight: its store failed
        return self._mirror(rid, user_id, conversation_id, message_id, owner).reply

    async def listing(self, user_id: str) -> list[dict[str, Any]]:
        try:
            rows = await self.db.read(lambda store: leases.in_flight(store, user_id))
        except DatabaseUnavailable:
            return await self.local.listing(user_id)
        out = []
        elsewhere: dict[str, list[str]] = {}  # owner -> its replies known here by their record only
        for rid, message_id, conversation_id, owner in rows:
            reply = self.local.find(user_id, reply_id=rid)
            mirror = self._mirrors.get(rid)
            if reply is not None:
                out.append(reply.listing())
            elif mirror is not None:
                out.append(mirror.reply.listing())
            elif owner != self.owner:
                out.append({"conversation_id": conversation_id, "message_id": rid, "reply_to": message_id, "seq": 0})
                elsewhere.setdefault(owner, []).append(rid)
        if elsewhere:  # "deltas sent so far": their owners say, within a tick or two
            seqs = await self._ask_seqs(elsewhere)
            for item in out:
                item["seq"] = seqs.get(item["message_id"], item["seq"])
        listed = {item["message_id"] for item in out}
        # Ours whose record could not be written (the database failed at that moment) are in flight too.
        out += [reply.listing() for reply in self.local.in_flight(user_id) if reply.id not in listed]
        return out

    async def _ask_seqs(self, by_owner: dict[str, list[str]]) -> dict[str, int]:
        loop = asyncio.get_running_loop()
        waiting = {rid: loop.create_future() for rids in by_owner.values() for rid in rids}
        for rid, future in waiting.items():
            self._seq_answers.setdefault(rid, []).append(future)
        for owner, rids in by_owner.items():
            for first in range(0, len(rids), 100):  # 100 ids fit a record well
                self._send(process_channel(owner), rec.SeqQuery(self.owner, rids[first:first + 100]))
        try:
            await asyncio.wait(list(waiting.values()), timeout=SEQ_ANSWER_S)
        finally:
            for rid, future in waiting.items():
                waiters = self._seq_answers.get(rid, [])
                if future in waiters:
                    waiters.remove(future)
                if not waiters:
                    self._seq_answers.pop(rid, None)
        return {rid: future.result() for rid, future in waiting.items() if future.done() and not future.cancelled()}

    def _mirror(self, reply_id: str, user_id: str, conversation_id: str, reply_to: str, owner: str) -> Mirror:
        mirror = self._mirrors.get(reply_id)
        if mirror is None:
            reply = LiveReply(reply_id, user_id, conversation_id, reply_to)
            mirror = Mirror(reply, owner, rec.Assembler(reply.pieces))
            self._mirrors[reply_id] = mirror
        return mirror

    def follow(self, reply: LiveReply, sink: Sink, after: int, *, preamble: dict[str, Any] | None = None,
               client_id: str | None = None, hold_interrupted: bool = False) -> Follower:
        mirror = self._mirrors.get(reply.id)
        if mirror is None or mirror.reply is not reply:
            return self.local.follow(reply, sink, after, preamble=preamble, client_id=client_id,
                                     hold_interrupted=hold_interrupted)
        follower = Follower(reply, sink, after, self._left_mirror, preamble=preamble, client_id=client_id,
                            hold_interrupted=hold_interrupted)
        first = not reply.followers
        reply.followers.append(follower)
        if first and reply.outcome is None:
            mirror.heard = time.monotonic()
            self._send(process_channel(mirror.owner), rec.Interest(self.owner, reply.id, reply.seq))
        return follower

    def _left_mirror(self, follower: Follower) -> None:
        reply = follower.reply
        with contextlib.suppress(ValueError):
            reply.followers.remove(follower)
        mirror = self._mirrors.get(reply.id)
        if not reply.followers and mirror is not None and reply.outcome is None:
            del self._mirrors[reply.id]
            self._send(process_channel(mirror.owner), rec.Uninterest(self.owner, reply.id))

    async def _end_mirror(self, mirror: Mirror, outcome: Outcome) -> None:
        reply = mirror.reply
        if reply.outcome is not None:
            return
        stored = outcome.stored
        if stored is not None and stored.content != reply.content and stored.content.startswith(reply.content):
            reply.pieces.append(stored.content[len(reply.content):])  # what did not reach us, as one piece
        reply.outcome = outcome
        if self._mirrors.get(reply.id) is mirror:
            del self._mirrors[reply.id]
        for follower in list(reply.followers):
            await follower.pump()

    # -- stopping and other tabs: broadcast; whoever has it acts ---------------------------------------
    def stop(self, user_id: str, reply_id: str, reason: str) -> bool:
        if self.local.stop(user_id, reply_id, reason):
            return True
        if self._stopped_lately(user_id, reply_id):
            return False  # broadcast a moment ago: the same id again costs every process nothing more
        self._send(BROADCAST, rec.Stop(user_id, reply_id, reason))
        return False

    def _stopped_lately(self, user_id: str, reply_id: str) -> bool:
        now = time.monotonic()
        if len(self._recent_stops) >= RECENT_STOPS:
            self._recent_stops = {k: t for k, t in self._recent_stops.items() if now - t < RECENT_STOP_S}
        key = (user_id, reply_id)
        if now - self._recent_stops.get(key, -RECENT_STOP_S) < RECENT_STOP_S:
            return True
        self._recent_stops[key] = now
        return False

    def stop_conversation(self, conversation_id: str, reason: str) -> int:
        self._send(BROADCAST, rec.StopConversation(conversation_id))
        return self.local.stop_conversation(conversation_id, reason)

    def announce_deleted(self, user_id: str, conversation_id: str) -> None:
        self.local.announce_deleted(user_id, conversation_id)
        self._send(BROADCAST, rec.Deleted(user_id, conversation_id))

    def announce_updated(self, user_id: str, conversation: dict[str, Any]) -> None:
        self.local.announce_updated(user_id, conversation)
        self._send(BROADCAST, rec.Updated(user_id, conversation["id"]))

    async def announce(self, message: MessageRecord, reply: LiveReply, origin: Sink, added: bool = True) -> None:
        await self.local.announce(message, reply, origin, added)
        self._send(BROADCAST, rec.Announce(self.owner, reply.user_id, message.id, reply.id, reply.conversation_id,
                                           0 if added else 1))

    def announce_selected(self, user_id: str, conversation_id: str, leaf_id: str, origin: Sink | None) -> None:
        self.local.announce_selected(user_id, conversation_id, leaf_id, origin)
        self._send(BROADCAST, rec.Selected(user_id, conversation_id, leaf_id))

    async def swept(self, orphans: list[Orphan]) -> None:
        """Replies of a dead process, just stored as interrupted: tell whoever follows them."""
        for orphan in orphans:
            self._send(BROADCAST, rec.Finished(orphan.reply_id, "interrupted", -1, None))
            mirror = self._mirrors.get(orphan.reply_id)
            if mirror is not None:
                await self._check(mirror)

    async def shut_down(self, timeout_s: float) -> None:
        await self.local.shut_down(timeout_s)
        await self.close()  # sends what waits: remote followers hear `interrupted`

    def health(self) -> dict[str, str]:
        """The LISTEN connection: without it, nothing crosses to or from another process."""
        return {"notify": "ok" if self.channel is not None and self.channel.connected else "down"}

    async def close(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            self._checker = None
        if self.channel is not None:
            await self.channel.close()

    # -- receiving ---------------------------------------------------------------------------------------
    def _received(self, records: list[rec.Record]) -> None:
        for record in records:
            self._handlers[type(record)](record)

    def _on_pieces(self, record: rec.Pieces) -> None:
        mirror = self._mirrors.get(record.reply_id)
        if mirror is None:
            return
        mirror.heard = time.monotonic()
        if not mirror.assembler.add(record):
            self._ask_again(mirror)
            return
        for follower in mirror.reply.followers[:]:
            self._spawn(follower.pump())

    def _on_finished(self, record: rec.Finished) -> None:
        mirror = self._mirrors.get(record.reply_id)
        if mirror is not None:
            self._spawn(self._finished(mirror, record))

    def _on_gone(self, record: rec.Gone) -> None:
        mirror = self._mirrors.get(record.reply_id)
        if mirror is not None:
            mirror.said_gone = True
            self._spawn(self._check(mirror))

    def _on_stop(self, record: rec.Stop) -> None:
        self.local.stop(record.user_id, record.reply_id, record.reason)  # only the user's own reply

    def _on_stop_conversation(self, record: rec.StopConversation) -> None:
        self.local.stop_conversation(record.conversation_id, "deleted")

    def _on_deleted(self, record: rec.Deleted) -> None:
        self.local.announce_deleted(record.user_id, record.conversation_id)

    def _on_selected(self, record: rec.Selected) -> None:
        self.local.announce_selected(record.user_id, record.conversation_id, record.leaf_id, None)

    def _on_updated(self, record: rec.Updated) -> None:
        if self.local.watchers(record.user_id):  # one read per process that has someone to tell
            self._spawn(self._updated(record))

    async def _updated(self, record: rec.Updated) -> None:
        # One at a time, in the order heard: two quick PATCHes must not reach a tab newest first.
        async with self._updates_in_order:
            try:
                found = await self.db.read(lambda store: conversations.get(store, record.conversation_id,
                                                                           record.user_id))
            except DatabaseUnavailable:
                log.warning("conversation %s changed but could not be read to tell its sockets",
                            record.conversation_id)
                return
            if found is not None:
                self.local.announce_updated(record.user_id, found)

    def _on_announce(self, record: rec.Announce) -> None:
        if self.local.watchers(record.user_id):
            self._spawn(self._announced(record))

    def _on_seq_query(self, record: rec.SeqQuery) -> None:
        for rid in record.reply_ids:
            reply = self.local.get(rid)
            if reply is not None:
                self._send(process_channel(record.owner), rec.SeqAnswer(rid, reply.seq))

    def _on_seq_answer(self, record: rec.SeqAnswer) -> None:
        for future in self._seq_answers.get(record.reply_id, ()):
            if not future.done():
                future.set_result(record.seq)

    def _on_interest(self, record: rec.Interest) -> None:
        reply_id = record.reply_id
        reply = self.local.get(reply_id) or self._dirty.get(reply_id)
        if reply is None:
            self._send(process_channel(record.owner), rec.Gone(reply_id))
            return
        self._remote.setdefault(reply_id, {})[record.owner] = max(0, min(record.after, reply.seq))
        self.local.attach(reply)
        self._dirty[reply_id] = reply
        assert self.channel is not None
        self.channel.wake()

    def _on_uninterest(self, record: rec.Uninterest) -> None:
        processes = self._remote.get(record.reply_id)
        if processes is None:
            return
        processes.pop(record.owner, None)
        if not processes:
            del self._remote[record.reply_id]
            reply = self.local.get(record.reply_id)
            if reply is not None and not reply.followers and reply.outcome is None:
                self.local.detach(reply)

    def _ask_again(self, mirror: Mirror) -> None:
        self._send(process_channel(mirror.owner), rec.Interest(self.owner, mirror.reply.id, mirror.reply.seq))

    async def _finished(self, mirror: Mirror, record: rec.Finished) -> None:
        reply, status = mirror.reply, record.status
        if status in STORED and record.seq == reply.seq:  # everything arrived: the stored reply is what we have
            stored = MessageRecord(reply.id, reply.conversation_id, 0, "assistant", reply.content, status, None,
                                   reply.reply_to, utcnow(), error=record.error)
            await self._end_mirror(mirror, Outcome(stored))
        elif status not in STORED:  # a failure code; one this release does not know is `internal`
            failure = ErrorCode(status) if status in ErrorCode._value2member_map_ else ErrorCode.INTERNAL
            await self._end_mirror(mirror, Outcome(None, failure))
        else:
            await self._check(mirror)

    async def _check(self, mirror: Mirror) -> None:
        """Ask the database: stored (take it), still in flight (ask the owner again), or neither."""
        if mirror.checking or mirror.reply.outcome is not None:
            return
        mirror.checking = True
        reply = mirror.reply
        try:
            stored = await self.db.read(lambda store: store.message_of(reply.user_id, reply.id))
            if stored is not None:
                await self._end_mirror(mirror, Outcome(stored))
                return
            found = await self.db.read(lambda store: leases.record(store, reply.user_id, reply.id, None))
            if found is None:  # neither stored nor in flight: its conversation was deleted
                await self._end_mirror(mirror, Outcome(None, ErrorCode.NOT_FOUND))
            elif reply.followers:
                mirror.heard = time.monotonic()
                if mirror.said_gone:
                    # Recorded as its owner's, yet its owner does not generate it: the owner
                    # stores such a claim itself (own_claims.py). Asking again at once would only
                    # make the two processes ask each other without end; the quiet check asks later.
                    mirror.said_gone = False
                    return
                self._ask_again(mirror)
        except DatabaseUnavailable:
            log.warning("could not check reply %s followed from another process", reply.id)
        finally:
            mirror.checking = False

    async def _check_quiet_mirrors(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for mirror in list(self._mirrors.values()):
                if now - mirror.heard > CHECK_AFTER_S:
                    mirror.heard = now
                    self._spawn(self._check(mirror))

    def _gap(self) -> None:
        """The LISTEN connection came back: whatever was sent meanwhile is lost; ask again."""
        for mirror in list(self._mirrors.values()):
            self._spawn(self._check(mirror))

    async def _announced(self, record: rec.Announce) -> None:
        """A user message committed on another process: this process's sync sockets follow its reply."""
        user_id = record.user_id
        try:
            message = await self.db.read(lambda store: store.message_of(user_id, record.message_id))
        except DatabaseUnavailable:
            return
        watchers = self.local.watchers(user_id)
        if message is None or not watchers:
            return
        mirror = self._mirror(record.reply_id, user_id, record.conversation_id, record.message_id, record.owner)
        preamble = None if record.regenerated else outgoing.message_added(message)
        for watcher in watchers:
            follower = self.follow(mirror.reply, watcher.sink, 0, preamble=preamble)
            watcher.adopt(follower)
            await follower.pump()


def _finished_record(reply: LiveReply, outcome: Outcome) -> rec.Finished:
    stored = outcome.stored
    if stored is not None:
        return rec.Finished(reply.id, stored.status, reply.seq, rec.clip(stored.error))
    failure = outcome.failure or ErrorCode.INTERNAL
    return rec.Finished(reply.id, failure.value, reply.seq, None)
