"""Titles from the model (CHAT_TITLES=model): after a conversation's first reply, one short request
to the backend, off the turn path. The first-words title stays if it fails; a title the user gave,
before or while the request runs, is never replaced (the write checks it). Every change goes to
the user's sync sockets as `conversation_updated`."""

from __future__ import annotations

import asyncio
import logging
import re

from server.chat.backends import Backend, BackendError
from server.config import Settings
from server.db import conversations
from server.db.uow import Database, DatabaseUnavailable
from server.domain import TITLE_CHARS, MessageRecord
from server.replies.ports import ConversationAnnouncing

log = logging.getLogger(__name__)

PROMPT = ("Write a title for the conversation below: at most six words, in the conversation's language, "
          "with no quotes and no punctuation at the end. Answer with the title only.")
EXCERPT_CHARS = 1500  # of each message: enough to know the subject, cheap to send
# Reasoning that some models put before the answer, closed or cut off by the token cap.
_REASONING = re.compile(r"<(think|thinking|reasoning|reflection)>.*?(</\1>|$)", re.IGNORECASE | re.DOTALL)
_LABEL = re.compile(r"^(title|titre|titel)\s*:\s*", re.IGNORECASE)


def clean_title(raw: str | None) -> str | None:
    """The model's answer as a title: reasoning and Markdown stripped, one line, quotes and the
    final period gone, at most TITLE_CHARS characters (cut at a word); None when nothing is left."""
    if not raw:
        return None
    text = _REASONING.sub(" ", raw)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    title = _LABEL.sub("", lines[0].lstrip("#>*-• ").strip())
    title = title.strip("*_`\"'“”‘’«» ").rstrip(".。!:;,").strip()
    title = " ".join(title.split())
    if len(title) > TITLE_CHARS:
        cut = title[: TITLE_CHARS - 1]
        title = (cut.rsplit(" ", 1)[0] if " " in cut else cut) + "…"
    return title or None


class Titler:
    def __init__(self, db: Database, backend: Backend, bus: ConversationAnnouncing, settings: Settings):
        self.db, self.backend, self.bus, self.settings = db, backend, bus, settings
        self.enabled = settings.titles == "model"
        self._tasks: set[asyncio.Task[None]] = set()

    def after_reply(self, message: MessageRecord, reply: MessageRecord) -> None:
        """A reply was stored: a conversation's first one (a root's complete reply) may earn a title."""
        if not self.enabled or reply.status != "complete" or message.parent_id is not None:
            return
        task = asyncio.ensure_future(self._title(message, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _title(self, message: MessageRecord, reply: MessageRecord) -> None:
        conversation_id = message.conversation_id
        try:
            model = await self.db.read(lambda store: conversations.untitled_model(store, conversation_id))
            if model is None:
                return  # titled already (by the model or by its user), or gone
            raw = await asyncio.wait_for(self.backend.complete(
                [{"role": "system", "content": PROMPT},
                 {"role": "user", "content": f"User: {message.content[:EXCERPT_CHARS]}\n\n"
                                             f"Assistant: {reply.content[:EXCERPT_CHARS]}"}],
                model=model or None, max_tokens=self.settings.title_max_tokens,
                timeout_s=self.settings.title_timeout_s), self.settings.title_timeout_s + 1)
            title = clean_title(raw)
            if title is None:
                return
            changed = await self.db.write(lambda store: conversations.title_by_model(store, conversation_id, title))
        except (BackendError, TimeoutError, DatabaseUnavailable) as e:
            log.info("conversation %s keeps its first words as title: %s", conversation_id, e or type(e).__name__)
            return
        except Exception:
            log.exception("titling conversation %s failed", conversation_id)
            return
        if changed is not None:
            user_id, conversation = changed
            self.bus.announce_updated(user_id, conversation)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
