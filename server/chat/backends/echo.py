"""The built-in backend: "You said: <message>", one delta per word with its trailing space."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from server.chat.backends.base import ChatTurn

_WORD = re.compile(r"\S+\s*")


class EchoBackend:
    name = "echo"
    context_messages = 0

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    @staticmethod
    def reply_to(message: str) -> str:
        return f"You said: {message}"

    async def stream(self, turn: ChatTurn) -> AsyncIterator[str]:
        turn.stats.model = self.name
        for piece in _WORD.findall(self.reply_to(turn.user_message)):
            # A pause before each delta looks like typing; with no pause, still yield to the loop
            # so a cancel is seen between deltas.
            await asyncio.sleep(self.delay_s)
            yield piece

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
