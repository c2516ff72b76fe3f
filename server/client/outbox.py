"""The frames this client sends for what it waits for: the first time, on a new socket, and again later.

A message is the same frame every time it is sent (its `client_id` is the server's idempotency key,
its conversation chosen at the first send, its parent named once), and so is a regenerate (its
`client_id` is in the same namespace), so a resend can never start a second turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from .connection import Connection
from .entries import CURRENT, TURNS, Absent, CurrentConversation, Entry
from .pending import Pending


class Outbox:
    """Sends entries on the connection and records what the server will answer in order."""

    def __init__(self, connection: Connection, pending: Pending, current: CurrentConversation) -> None:
        self._conn, self._pending, self._current = connection, pending, current
        self._tasks: set[asyncio.Task[Any]] = set()

    async def submit(self, entry: Entry) -> None:
        """Wait for `entry`, and send it now if a socket is open (else the next socket sends it)."""
        self._pending.entries.append(entry)
        async with self._conn.send_lock:
            if self._conn.ws is not None and entry.sent_gen != self._conn.gen:
                await self.send_entry(entry)

    async def send_entry(self, entry: Entry) -> None:
        entry.sent_gen = self._conn.gen
        if entry.kind == "resume":
            await self._send_resume(entry)
            return
        if entry.acked:
            entry.bare_done_expected = True  # answered by ack duplicate, then done alone or a new reply
        if entry.kind == "regenerate":
            await self._conn.send({"type": "regenerate", "reply_to": entry.regenerates, "client_id": entry.client_id})
        else:
            await self._conn.send(self._message_frame(entry))

    def _message_frame(self, entry: Entry) -> dict[str, Any]:
        """The same frame every time: its conversation is chosen once, at the first send."""
        if not entry.resolved:
            # A message under a named parent goes to the parent's conversation unless one is named.
            under_parent = isinstance(entry.parent, str) and isinstance(entry.target, Absent)
            entry.wire_target = CURRENT if under_parent else self._current.resolve(entry.target)
            entry.resolved = True
        frame: dict[str, Any] = {"type": "message", "content": entry.content, "client_id": entry.client_id}
        if not isinstance(entry.wire_target, Absent):
            frame["conversation_id"] = entry.wire_target
        if not isinstance(entry.parent, Absent):
            frame["parent_id"] = entry.parent
        return frame

    async def _send_resume(self, entry: Entry) -> None:
        frame: dict[str, Any] = {"type": "resume", "after": entry.seq if entry.reply_id else 0}
        if entry.reply_id is not None:
            frame["message_id"] = entry.reply_id
        else:
            frame["reply_to"] = entry.user_message_id
        entry.bare_done_expected = True
        self._pending.expect("resume", entry)
        await self._conn.send(frame)

    async def send_again(self, ready: dict[str, Any]) -> None:
        """On a new socket (the send lock held): send again what was not acknowledged, follow again
        what was streaming, ask again what was not answered."""
        supports_resume = "replies_in_flight" in ready
        in_flight = {r["reply_to"]: r for r in ready.get("replies_in_flight") or []}
        requests = self._pending.take_requests()
        for entry in list(self._pending.entries):
            if entry.kind in TURNS and entry.acked and supports_resume and entry.user_message_id in in_flight:
                r = in_flight[entry.user_message_id]
                if r["message_id"] != entry.reply_id:
                    entry.reply_id, entry.seq, entry.text, entry.gap = r["message_id"], 0, "", False
                entry.sent_gen = self._conn.gen
                await self._send_resume(entry)
            else:
                await self.send_entry(entry)
        for request in requests:
            self._pending.expect(request.kind, request)
            await self._conn.send(request.frame)

    def resend_later(self, entry: Entry, delay: float) -> None:
        """Send `entry` again after `delay` seconds, if it is still waited for and a socket is open."""
        self._spawn(self._resend_later(entry, delay))

    async def _resend_later(self, entry: Entry, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._conn.send_lock:
            if entry in self._pending.entries and self._conn.ws is not None:
                await self.send_entry(entry)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_resends(self) -> None:
        for task in list(self._tasks):
            task.cancel()
