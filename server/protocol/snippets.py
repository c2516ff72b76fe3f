"""A search hit's snippet: the part of a message around its first match, HTML-escaped, with every
matched word in <mark>…</mark> (the only markup in it), so that a page can show it as it is and a
client that builds its own nodes can split on the two tags."""

from __future__ import annotations

import html
import re

SNIPPET_CHARS = 200
LEAD_CHARS = 60  # how much comes before the first match


def snippet(content: str, words: list[str]) -> str:
    text = " ".join(content.split())
    pattern = _matcher(words)
    first = pattern.search(text) if pattern else None
    start = 0
    if first is not None and first.start() > LEAD_CHARS:
        start = text.rfind(" ", 0, first.start() - LEAD_CHARS) + 1 or first.start() - LEAD_CHARS
    end = min(len(text), start + SNIPPET_CHARS)
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > (first.end() if first else start) else end
    piece = text[start:end]
    out = ["…"] if start > 0 else []
    at = 0
    for match in pattern.finditer(piece) if pattern else ():
        out.append(html.escape(piece[at:match.start()]))
        out.append(f"<mark>{html.escape(match.group())}</mark>")
        at = match.end()
    out.append(html.escape(piece[at:]))
    if end < len(text):
        out.append("…")
    return "".join(out)


def _matcher(words: list[str]) -> re.Pattern[str] | None:
    """Whole words, in any case (as the index matched them); the longest first, so that "cats"
    wins over "cat" where both were asked for."""
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
