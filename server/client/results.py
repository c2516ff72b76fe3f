"""What the client hands back: plain frozen values built from the server's frames."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Feedback:
    """The user's rating of an assistant message: 1 (good), -1 (bad) or 0 (none), and a comment."""

    rating: int
    comment: str | None = None

    @classmethod
    def from_wire(cls, f: Any) -> Feedback | None:
        if not isinstance(f, Mapping):
            return None
        return cls(rating=int(f["rating"]), comment=f.get("comment"))


@dataclass(frozen=True)
class Reply:
    """The assistant's reply as stored: `status` is complete, cancelled, error or interrupted."""

    content: str
    status: str
    message_id: str
    reply_to: str | None
    conversation_id: str
    client_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "complete"


@dataclass(frozen=True)
class Message:
    """One stored message of a conversation (a `history` item).

    `parent_id`: the message it follows (None for a root, and from a server without branches).
    `siblings`: the ids of the messages with the same parent, itself included, oldest first: more
    than one when it was edited or regenerated (empty when the server does not say).
    `feedback`: the user's rating of an assistant message (None: not rated, or a user message).
    """

    id: str
    role: str
    content: str
    status: str
    client_id: str | None = None
    created_at: str | None = None
    reply_to: str | None = None
    parent_id: str | None = None
    siblings: tuple[str, ...] = ()
    feedback: Feedback | None = None

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> Message:
        return cls(id=m["id"], role=m["role"], content=m["content"], status=m["status"],
                   client_id=m.get("client_id"), created_at=m.get("created_at"), reply_to=m.get("reply_to"),
                   parent_id=m.get("parent_id"), siblings=tuple(m.get("siblings") or ()),
                   feedback=Feedback.from_wire(m.get("feedback")))


@dataclass(frozen=True)
class HistoryPage:
    """A page of the path from the root to `leaf_id` (the current leaf unless one was asked for),
    oldest first; `leaf_id` is None from a server without branches."""

    conversation_id: str
    messages: list[Message]
    has_more: bool
    leaf_id: str | None = None


@dataclass(frozen=True)
class TreeNode:
    """A message of a conversation's tree, without its content."""

    id: str
    parent_id: str | None
    role: str
    status: str
    created_at: str | None = None
    reply_to: str | None = None

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> TreeNode:
        return cls(id=m["id"], parent_id=m.get("parent_id"), role=m["role"], status=m["status"],
                   created_at=m.get("created_at"), reply_to=m.get("reply_to"))


@dataclass(frozen=True)
class Tree:
    """Every message of a conversation, every branch, oldest first, and the current leaf."""

    conversation_id: str
    leaf_id: str | None
    items: list[TreeNode]

    def children(self, message_id: str | None) -> list[TreeNode]:
        """The messages that follow `message_id` (None: the roots), oldest first."""
        return [n for n in self.items if n.parent_id == message_id]

    def replies_to(self, message_id: str) -> list[TreeNode]:
        """Every stored reply to the user message `message_id`, regenerated ones included."""
        return [n for n in self.items if n.role == "assistant" and n.reply_to == message_id]


@dataclass(frozen=True)
class Conversation:
    """A conversation and its settings. `model` and `system_prompt`: None for the server's
    default. `title_source`: "words" (the first message's), "model" (asked of the model) or
    "user" (renamed: the server never replaces it)."""

    id: str
    title: str
    created_at: str | None = None
    updated_at: str | None = None
    model: str | None = None
    system_prompt: str | None = None
    title_source: str | None = None

    @classmethod
    def from_wire(cls, c: Mapping[str, Any]) -> Conversation:
        return cls(id=c["id"], title=c.get("title") or "", created_at=c.get("created_at"),
                   updated_at=c.get("updated_at"), model=c.get("model"), system_prompt=c.get("system_prompt"),
                   title_source=c.get("title_source"))


@dataclass(frozen=True)
class ConversationPage:
    """A page of the user's conversations, most recently updated first; the next page is
    `before=items[-1].id` while `has_more`."""

    items: list[Conversation]
    has_more: bool


@dataclass(frozen=True)
class Models:
    """The models a conversation may use (`ids`) and the server's default."""

    ids: list[str]
    default: str | None


_MARK = re.compile(r"(<mark>|</mark>)")


@dataclass(frozen=True)
class SearchHit:
    """A message of the user's that matches a search, newest first.

    `snippet`: HTML, a piece of the message around the first match, escaped, each matched word in
    <mark>…</mark> (its only tags). Never put it in a page as HTML without knowing that: `parts()`
    gives it as plain text pieces with whether each is a match, `text` as plain text.
    """

    conversation_id: str
    message_id: str
    role: str
    snippet: str
    created_at: str | None = None

    @classmethod
    def from_wire(cls, h: Mapping[str, Any]) -> SearchHit:
        return cls(conversation_id=h["conversation_id"], message_id=h["message_id"], role=h["role"],
                   snippet=h.get("snippet") or "", created_at=h.get("created_at"))

    def parts(self) -> list[tuple[str, bool]]:
        """The snippet as (plain text, matched) pieces, in order, unescaped; empty pieces left out."""
        pieces: list[tuple[str, bool]] = []
        marked = False
        for token in _MARK.split(self.snippet):
            if token == "<mark>":
                marked = True
            elif token == "</mark>":
                marked = False
            elif token:
                pieces.append((html.unescape(token), marked))
        return pieces

    @property
    def text(self) -> str:
        """The snippet as plain text (no marks, unescaped)."""
        return "".join(text for text, _ in self.parts())


@dataclass(frozen=True)
class SearchPage:
    """A page of search hits, newest first; the next page is `before=items[-1].message_id` while `has_more`."""

    items: list[SearchHit]
    has_more: bool


@dataclass(frozen=True)
class ReplyInFlight:
    """An item of `ready.replies_in_flight`: a reply of this user being generated right now."""

    conversation_id: str
    message_id: str
    reply_to: str
    seq: int


@dataclass(frozen=True)
class Event:
    """What a `sync=True` socket hears of the user's other sockets: `message_added`,
    `conversation_deleted`, `selected` (another socket chose a branch: `leaf_id`),
    `conversation_updated` (renamed, new settings, a title from the model: `conversation`), and
    the `start`, `delta` and `done` of their replies (`frame` is the frame as received)."""

    type: str
    conversation_id: str | None
    message_id: str | None
    frame: dict[str, Any] = field(repr=False)

    @property
    def message(self) -> Message | None:
        m = self.frame.get("message")
        return Message.from_wire(m) if isinstance(m, dict) else None

    @property
    def leaf_id(self) -> str | None:
        """A `selected` event's new current leaf."""
        leaf = self.frame.get("leaf_id")
        return leaf if isinstance(leaf, str) else None

    @property
    def conversation(self) -> Conversation | None:
        """A `conversation_updated` event's conversation, as it is now."""
        c = self.frame.get("conversation")
        return Conversation.from_wire(c) if isinstance(c, dict) else None
