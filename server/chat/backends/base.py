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


class BackendError(Exception):
    """A failure with a sentence a person can act on (never holding a secret)."""


class Backend(Protocol):
    name: str
    # How many earlier messages to load as context; 0 means none (no database read per turn).
    context_messages: int

    def stream(self, turn: ModelRequest) -> AsyncIterator[str]:
        """The reply, piece by piece. Cancelling the consuming task must stop it at once:
        a backend closes whatever it holds upstream in its `finally`."""
        ...

    async def ready(self) -> bool:
        """Whether the backend can answer now (for /readyz)."""
        ...

    async def aclose(self) -> None: ...
