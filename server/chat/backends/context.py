"""Which messages a model sees: the system prompt, then the latest messages that fit a budget."""

from __future__ import annotations

from server.chat.backends.base import ContextMessage


def build_messages(system_prompt: str, context: list[ContextMessage], user_message: str,
                   budget_chars: int) -> list[dict[str, str]]:
    """Oldest messages are dropped first, whole: never half a message. The new user message is
    always sent. Replies that were cancelled, failed or interrupted are sent as far as they got,
    since that is what the person saw and may refer to; empty ones are left out."""
    left = budget_chars - len(user_message)
    kept: list[dict[str, str]] = []
    for message in reversed(context):
        if not message.content:
            continue
        if len(message.content) > left:
            break
        left -= len(message.content)
        kept.append({"role": message.role, "content": message.content})
    kept.reverse()
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*head, *kept, {"role": "user", "content": user_message}]
