"""Model backends: anything that turns a conversation into an async stream of text pieces."""

from server.chat.backends.base import Backend, ChatTurn, ContextMessage
from server.config import Settings


def make_backend(settings: Settings) -> Backend:
    if settings.llm == "echo":
        from server.chat.backends.echo import EchoBackend

        return EchoBackend(delay_s=settings.echo_delay_ms / 1000)
    raise ValueError(f"CHAT_LLM={settings.llm!r} is not available in this build (known: echo)")


__all__ = ["Backend", "ChatTurn", "ContextMessage", "make_backend"]
