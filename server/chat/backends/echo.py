"""The built-in backend: "You said: <message>", one delta per word with its trailing space."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from server.chat.backends.base import ModelRequest

_WORD = re.compile(r"\S+\s*")
YIELD_EVERY = 32


class EchoBackend:
    name = "echo"
    context_messages = 0
    uses_settings = False
    default_model = "echo"

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    @staticmethod
    def reply_to(message: str) -> str:
        return f"You said: {message}"

    async def stream(self, turn: ModelRequest) -> AsyncIterator[str]:
        turn.stats.model = self.name
        for n, piece in enumerate(_WORD.findall(self.reply_to(turn.user_message))):
            # A pause before each delta looks like typing. With no pause the reply comes at once,
            # as a fast model's does; every YIELD_EVERY deltas it still yields to the loop, so that a
            # long one cannot hold up other sockets, and a cancel is seen.
            if self.delay_s or n % YIELD_EVERY == 0:
                await asyncio.sleep(self.delay_s)
            yield piece

    async def list_models(self) -> list[str]:
        return [self.default_model]

    async def complete(self, messages: list[dict[str, str]], *, model: str | None, max_tokens: int,
                       timeout_s: float) -> str | None:
        return None  # nothing to ask: the first words stay the title

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
