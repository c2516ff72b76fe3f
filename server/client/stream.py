"""The reader's side of one reply: its pieces in order, each once, then the stored `Reply`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from .entries import Entry
from .errors import ChatTimeout
from .results import Reply

if TYPE_CHECKING:
    from .chat_client import ChatClient


class ReplyStream:
    """The reply to one message (or a followed reply): iterate for its pieces, or await it.

    `async for piece in stream` gives the text in order, exactly once; afterwards `stream.reply`
    is the stored `Reply`. `await stream` waits for the reply (also after a `break` out of the loop).
    """

    def __init__(self, client: ChatClient, begin: Callable[[], Awaitable[Entry]], timeout: float) -> None:
        self._client, self._begin, self._timeout = client, begin, timeout
        self._entry: Entry | None = None
        self._deadline = 0.0
        self.reply: Reply | None = None

    @property
    def message_id(self) -> str | None:
        """The reply's id, once its `start` came (a regenerated reply has a new one)."""
        return self._entry.reply_id if self._entry else None

    @property
    def reply_to(self) -> str | None:
        """The id of the user message, once acknowledged."""
        return self._entry.user_message_id if self._entry else None

    @property
    def client_id(self) -> str | None:
        """The message's idempotency key, once sent."""
        return self._entry.client_id if self._entry else None

    @property
    def seq(self) -> int:
        """The last `seq` received of the reply (what `resume(after=...)` takes)."""
        return self._entry.seq if self._entry else 0

    async def cancel(self) -> None:
        """Stop this reply (the server sends `done` with status cancelled)."""
        await self._client.cancel(self.message_id)

    def __aiter__(self) -> ReplyStream:
        return self

    def __await__(self) -> Generator[Any, None, Reply]:
        return self._drain().__await__()

    async def _drain(self) -> Reply:
        async for _ in self:
            pass
        assert self.reply is not None
        return self.reply

    async def __anext__(self) -> str:
        loop = asyncio.get_running_loop()
        if self._entry is None:
            self._entry = await self._begin()
            self._deadline = loop.time() + self._timeout
        entry = self._entry
        if entry.future.done() and entry.pieces.empty():
            self.reply = entry.future.result()  # raises the entry's ChatError
            raise StopAsyncIteration
        try:  # what already came is given even when the reader was slow
            piece = entry.pieces.get_nowait() if not entry.pieces.empty() else await asyncio.wait_for(
                entry.pieces.get(), max(0.0, self._deadline - loop.time()))
        except TimeoutError:
            self._client._forget(entry)
            error = ChatTimeout(f"no `done` within {self._timeout:g}s for {entry.describe()}",
                                client_id=entry.client_id)
            entry.fail(error)
            raise error from None
        if piece is None:
            self.reply = entry.future.result()
            raise StopAsyncIteration
        return piece
