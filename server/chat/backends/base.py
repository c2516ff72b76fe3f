"""The interface every model backend implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ContextMessage:
    role: str  # "user" or "assistant"
    content: str
    status: str  # an assistant message may be cancelled, error or interrupted


@dataclass(slots=True)
class ReplyStats:
    """What a backend reports about the reply it streamed; stored with the reply."""

    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """What a backend gets: the user's message and, if it asked for it, what came before."""

    conversation_id: str
    user_message: str
    context: list[ContextMessage] = field(default_factory=list)  # oldest first, without user_message
    stats: ReplyStats = field(default_factory=ReplyStats)
    # The conversation's own settings (PATCH); None: the server's defaults.
    system_prompt: str | None = None
    model: str | None = None


class BackendError(Exception):
    """A failure with a sentence a person can act on (never holding a secret)."""


class Backend(Protocol):
    name: str
    # How many earlier messages to load as context; 0 means none (no database read per turn).
    context_messages: int
    # Whether a conversation's system prompt and model change what it does (else they are not read).
    uses_settings: bool
    default_model: str

    def stream(self, turn: ModelRequest) -> AsyncIterator[str]:
        """The reply, piece by piece. Cancelling the consuming task must stop it at once:
        a backend closes whatever it holds upstream in its `finally`."""
        ...

    async def list_models(self) -> list[str]:
        """The models it serves (BackendError when it cannot say)."""
        ...

    async def complete(self, messages: list[dict[str, str]], *, model: str | None, max_tokens: int,
                       timeout_s: float) -> str | None:
        """One short answer, not streamed (a title); None when the backend has no model to ask."""
        ...

    async def ready(self) -> bool:
        """Whether the backend can answer now (for /readyz)."""
        ...

    async def aclose(self) -> None: ...
