"""What each frame from the server does to what the client waits for.

A frame settles an entry (`ack`, `start`, `delta`, `done`, an `error` with `client_id`), answers the
oldest request (`history`, `selected`, an `error` without one), or is news of the user's other
sockets, which a `sync=True` client queues as an `Event`. A reply that died (`interrupted`) or a
turn the server could not take (`unavailable`) is sent again rather than failed, up to `retries`
times. A regenerate's `ack` names the user message it answers again (no new message): to its entry
that is the reply's `reply_to`, as a message's own id is to a message's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from .connection import Settings
from .entries import TURNS, CurrentConversation, Request
from .errors import ChatError
from .outbox import Outbox
from .pending import Pending
from .results import Event

log = logging.getLogger("server.client")


class Dispatcher:
    """Routes the server's frames to the entries and requests of `pending`, and to `events`."""

    def __init__(self, settings: Settings, pending: Pending, outbox: Outbox, current: CurrentConversation,
                 delay: Callable[[int], float]) -> None:
        self._settings, self._pending, self._outbox, self._current = settings, pending, outbox, current
        self._delay = delay
        self._foreign: set[str] = set()  # reply ids of other sockets (sync)
        self._swallow_not_found = False
        self.events: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=10_000)

    def expect_not_found(self) -> None:
        """The conversation asked for on reconnect is gone: the `not_found` that follows is about it."""
        self._swallow_not_found = True

    def end_events(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.events.put_nowait(None)

    def dispatch_raw(self, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
            self.dispatch(frame)
        except Exception:  # one odd frame must not stop the reader
            log.exception("could not handle a frame from the server: %.200r", raw)

    def dispatch(self, f: dict[str, Any]) -> None:
        kind = f.get("type")
        if kind == "ack":
            self._on_ack(f)
        elif kind == "start":
            self._on_start(f)
        elif kind == "delta":
            entry = self._pending.by_reply(f.get("message_id"))
            if entry is not None:
                entry.on_delta(f.get("seq"), f.get("content", ""))
            else:
                self._event(f)
        elif kind == "done":
            self._on_done(f)
        elif kind == "history":
            self._pending.answer(f)
        elif kind == "selected":
            if not self._pending.answer(f):
                self._event(f)  # another socket of the user chose a branch
        elif kind == "error":
            self._on_error(f)
        elif kind in ("message_added", "conversation_deleted", "conversation_updated"):
            self._event(f)
        else:
            log.debug("ignored frame %s", kind)

    def _on_ack(self, f: dict[str, Any]) -> None:
        entry = self._pending.by_client_id(f.get("client_id"))
        if entry is None:
            return
        first = not entry.acked
        entry.acked, entry.user_message_id = True, f["message_id"]
        entry.conversation_id = f["conversation_id"]
        if f.get("duplicate"):
            entry.bare_done_expected = True
        if first:
            self._current.id = f["conversation_id"]

    def _on_start(self, f: dict[str, Any]) -> None:
        mid = f.get("message_id")
        entry = self._pending.for_start(mid, f.get("reply_to"))
        if entry is None:
            self._foreign.add(str(mid))
            self._event(f)
            return
        entry.on_start(f)
        self._pending.unexpect("resume", entry)

    def _on_done(self, f: dict[str, Any]) -> None:
        mid = f.get("message_id")
        entry = self._pending.by_reply(mid)
        if entry is None and mid not in self._foreign:
            # A done with no start: the stored reply to a duplicate, or to a resume by reply_to.
            entry = self._pending.for_bare_done(f.get("reply_to"))
        if entry is None:
            self._foreign.discard(str(mid))
            self._event(f)
            return
        if entry.kind in TURNS and f.get("status") == "interrupted" and entry.resends < self._settings.retries:
            # The reply this client followed died with its process (or ran out of detached time):
            # a resend of the client_id has the server generate it again.
            entry.resends += 1
            self._outbox.resend_later(entry, 0)
            return
        self._pending.forget(entry)
        entry.finish(f)

    def _on_error(self, f: dict[str, Any]) -> None:
        code, detail, client_id = f.get("code", "internal"), f.get("detail", ""), f.get("client_id")
        if client_id is not None:
            entry = self._pending.by_client_id(client_id)
            if entry is None:
                return
            if code == "unavailable" and entry.resends < self._settings.retries:
                entry.resends += 1  # not stored, or the turn failed after the ack: send it again a little later
                self._outbox.resend_later(entry, self._delay(entry.resends))
                return
            self._pending.forget(entry)
            entry.fail(ChatError(code, detail, client_id=client_id))
            return
        if code == "not_found" and self._swallow_not_found:
            self._swallow_not_found = False
            return
        oldest = self._pending.oldest_awaited()
        if oldest is None:
            log.warning("error from the server: %s: %s", code, detail)
            return
        _, item = oldest
        if isinstance(item, Request):
            item.fail(ChatError(code, detail))
        elif item.kind in TURNS and code == "not_found":
            self._outbox.resend_later(item, 0)  # no reply to follow: the resend completes the turn
        else:
            self._pending.forget(item)
            item.fail(ChatError(code, detail))

    def _event(self, f: dict[str, Any]) -> None:
        if not self._settings.sync:
            log.debug("a frame for no waiting reply: %.200r", f)
            return
        if f.get("type") == "done":
            self._foreign.discard(str(f.get("message_id")))
        if self.events.full():
            self.events.get_nowait()  # bounded: the oldest event goes
            log.warning("events() is not read: dropped the oldest event")
        conversation_id = f.get("conversation_id")
        if conversation_id is None and isinstance(f.get("conversation"), dict):
            conversation_id = f["conversation"].get("id")  # conversation_updated names it inside
        self.events.put_nowait(Event(f["type"], conversation_id, f.get("message_id"), f))
