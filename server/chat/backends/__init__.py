"""Model backends: anything that turns a conversation into an async stream of text pieces."""

from server.chat.backends.base import Backend, BackendError, ContextMessage, ModelRequest, ReplyStats
from server.config import Settings


def make_backend(settings: Settings) -> Backend:
    if settings.llm == "echo":
        from server.chat.backends.echo import EchoBackend

        return EchoBackend(delay_s=settings.echo_delay_ms / 1000)
    from server.chat.backends.openai import OpenAIBackend

    return OpenAIBackend(settings)


__all__ = ["Backend", "BackendError", "ModelRequest", "ContextMessage", "ReplyStats", "make_backend"]
