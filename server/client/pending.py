"""The bookkeeping of what the client waits for, apart from the sending and the frames that settle it.

Entries are kept until their `done` (or failure). Requests the server answers in the order they came
(`history`, `select`, and a `resume` until its `start`) are also kept in send order, because an
`error` frame without `client_id` answers the oldest of them.
"""

from __future__ import annotations

import contextlib
from typing import Any

from .entries import TURNS, Entry, Request


class Pending:
    """The entries this client waits for, and its requests awaiting an answer, in send order."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        # (kind, Request) for history and select, ("resume", Entry), in send order
        self.awaiting: list[tuple[str, Any]] = []

    def expect(self, kind: str, item: Any) -> None:
        self.awaiting.append((kind, item))

    def unexpect(self, kind: str, item: Any) -> None:
        with contextlib.suppress(ValueError):
            self.awaiting.remove((kind, item))

    def forget(self, entry: Entry) -> None:
        with contextlib.suppress(ValueError):
            self.entries.remove(entry)
        self.unexpect("resume", entry)

    def fail_all(self, error: Exception) -> None:
        for entry in self.entries:
            entry.fail(error)
        self.entries.clear()
        for _, item in self.awaiting:
            if isinstance(item, Request):
                item.fail(error)
        self.awaiting.clear()

    def take_requests(self) -> list[Request]:
        """A new socket: nothing sent on the old one will be answered; the caller asks these again."""
        requests = [r for _, r in self.awaiting if isinstance(r, Request)]
        self.awaiting = []
        return requests

    def oldest_awaited(self) -> tuple[str, Any] | None:
        return self.awaiting.pop(0) if self.awaiting else None

    # -- which entry a frame is about
    def by_reply(self, message_id: Any) -> Entry | None:
        return next((e for e in self.entries if e.reply_id == message_id and message_id), None)

    def by_client_id(self, client_id: Any) -> Entry | None:
        return next((e for e in self.entries if e.client_id is not None and e.client_id == client_id), None)

    def for_start(self, message_id: Any, reply_to: Any) -> Entry | None:
        """The entry of this reply, or the one waiting for a reply to `reply_to` (a regenerated one)."""
        return self.by_reply(message_id) or next(
            (e for e in self.entries if e.user_message_id == reply_to and reply_to and e.reply_id != message_id), None)

    def for_bare_done(self, reply_to: Any = None) -> Entry | None:
        """The entry a `done` with no `start` answers: a resume by reply_to, or a turn sent again.
        A server that names the done's `reply_to` has it matched; an older one, the first waiting."""
        def answers(e: Entry) -> bool:
            return reply_to is None or e.user_message_id == reply_to

        return next((e for k, e in self.awaiting if k == "resume" and e.reply_id is None and answers(e)), None) or next(
            (e for e in self.entries if e.kind in TURNS and e.bare_done_expected and answers(e)), None)

    def answer(self, frame: dict[str, Any]) -> bool:
        """Settle the oldest request this frame answers (`history` by its conversation, `select`
        with `selected` of its conversation); False when none waits for it."""
        kind = "select" if frame.get("type") == "selected" else frame.get("type")
        for i, (k, request) in enumerate(self.awaiting):
            if k == kind and request.frame["conversation_id"] == frame.get("conversation_id"):
                del self.awaiting[i]
                if not request.future.done():
                    request.future.set_result(frame)
                return True
        return False
