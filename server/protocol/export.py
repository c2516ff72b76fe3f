"""A conversation to take away: JSON with its settings and whole tree, or its current branch as
Markdown that reads well in any viewer."""

from __future__ import annotations

import re
from typing import Any

from server.domain import MessageRecord, iso, utcnow
from server.protocol.outgoing import message

SPEAKERS = {"user": "You", "assistant": "Assistant"}
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9 .,()_-]+")  # a header value: ASCII only


def as_json(conversation: dict[str, Any], leaf_id: str | None, messages: list[MessageRecord]) -> dict[str, Any]:
    return {"conversation": {**conversation, "leaf_id": leaf_id}, "exported_at": iso(utcnow()),
            "messages": [message(m) for m in messages]}


def as_markdown(conversation: dict[str, Any], path: list[MessageRecord]) -> str:
    lines = [f"# {_one_line(conversation['title'])}", ""]
    about = [f"Exported {iso(utcnow())}", f"created {conversation['created_at']}"]
    if conversation.get("model"):
        about.append(f"model {conversation['model']}")
    lines += ["_" + ", ".join(about) + "_", ""]
    if conversation.get("system_prompt"):
        lines += ["**System prompt**", "", _quoted(conversation["system_prompt"]), ""]
    for m in path:
        heading = f"## {SPEAKERS.get(m.role, m.role)}"
        if m.role == "assistant" and m.status != "complete":
            heading += f" ({m.status})"
        lines += ["---", "", heading, "", m.content.strip() or "_(empty)_", ""]
    return "\n".join(lines)


def filename(conversation: dict[str, Any], extension: str) -> str:
    """An ASCII-safe name for Content-Disposition (the title, else the id)."""
    stem = _UNSAFE_FILENAME.sub("", conversation["title"]).strip()[:60] or conversation["id"]
    return f"{stem}.{extension}"


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "Conversation"


def _quoted(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.splitlines())
