"""In-process pieces for tests of the turn path: a fake socket, a model the test steps piece by
piece, and a harness around the real services (database, reply bus) on a temporary SQLite file."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

from server.chat.backends import ModelRequest
from server.chat.services import Services
from server.chat.turn_runner import TurnInProgress, TurnRunner
from server.protocol.frames import MessageFrame
from server.replies.follower import Follower
from server.replies.sink import Disconnected


def aio(fn):  # type: ignore[no-untyped-def]
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 30))

    return wrapper


class FakeSink:
    """A socket as the chat layer sees it: frames land in a list. `stall()` makes it stop reading
    (sends wait, as on a socket whose client does not read); `vanish()` makes it gone."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.gone = False
        self._reading = asyncio.Event()
        self._reading.set()
        self._arrived = asyncio.Event()
        self.followed: dict[str, Follower] = {}
        self.events: list[dict[str, Any]] = []

    # Sink
    async def send(self, frame: dict[str, Any]) -> None:
        if self.gone:
            raise Disconnected()
        await self._reading.wait()
        if self.gone:
            raise Disconnected()
        self.frames.append(frame)
        self._arrived.set()

    def writable(self) -> bool:
        return not self.gone and self._reading.is_set()

    # Watcher
    @property
    def sink(self) -> FakeSink:
        return self

    def adopt(self, follower: Follower) -> None:
        self.followed[follower.reply.id] = follower

    def event(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)
        self._arrived.set()

    # control
    def stall(self) -> None:
        self._reading.clear()

    def read_again(self) -> None:
        self._reading.set()

    def vanish(self) -> None:
        self.gone = True
        for follower in list(self.followed.values()):
            follower.drop()
        self._reading.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    async def until(self, test: Callable[[FakeSink], bool], timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            while not test(self):
                self._arrived.clear()
                await self._arrived.wait()

    async def until_done(self, reply_id: str | None = None) -> dict[str, Any]:
        def finished(s: FakeSink) -> bool:
            return any(f["type"] in ("done", "error") and (reply_id is None or f.get("message_id") == reply_id)
                       for f in s.frames)

        await self.until(finished)
        return next(f for f in self.frames if f["type"] in ("done", "error")
                    and (reply_id is None or f.get("message_id") == reply_id))


class SteppedModel:
    """A backend whose pieces the test releases: `give(n)` lets n more out; `end()` lets the
    rest go without waiting. Every piece is "p<i> "."""

    name = "stepped"
    context_messages = 0
    uses_settings = False
    default_model = "stepped"

    def __init__(self, pieces: int = 10):
        self.pieces = pieces
        self._allowed = 0
        self._free = False
        self._changed = asyncio.Event()
        self.closed = 0  # streams that were closed (finished or cancelled upstream)

    def give(self, n: int = 1) -> None:
        self._allowed += n
        self._changed.set()

    def end(self) -> None:
        self._free = True
        self._changed.set()

    def hold(self) -> None:
        """Pieces wait for `give` (or `end`) again."""
        self._free = False
        self._allowed = 0

    async def stream(self, turn: ModelRequest) -> AsyncIterator[str]:
        turn.stats.model = self.name
        try:
            for i in range(1, self.pieces + 1):
                while not self._free and self._allowed < 1:
                    self._changed.clear()
                    await self._changed.wait()
                if not self._free:
                    self._allowed -= 1
                yield f"p{i} "
                await asyncio.sleep(0)
        finally:
            self.closed += 1

    async def list_models(self) -> list[str]:
        return [self.default_model]

    async def complete(self, messages: list[dict[str, str]], *, model: str | None, max_tokens: int,
                       timeout_s: float) -> str | None:
        return None

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


class Harness:
    def __init__(self, svc: Services, model: SteppedModel):
        self.svc = svc
        self.model = model

    def runner(self, user: str) -> TurnRunner:
        return TurnRunner(self.svc.reply_deps, self.svc.bus, self.svc.owner, user)

    def send(self, user: str, sink: FakeSink, content: str, client_id: str | None = None,
             conversation_id: Any = None, turn: TurnInProgress | None = None) -> asyncio.Task[Any]:
        """Run one turn in the background, as a socket's worker does."""
        frame = MessageFrame(content, conversation_id, client_id) if conversation_id else \
            MessageFrame(content, client_id=client_id)
        return asyncio.ensure_future(self.runner(user).run(frame, sink, None, turn or TurnInProgress()))

    async def stored(self, conversation_id: str) -> list[Any]:
        page, _ = await self.svc.db.read(lambda store: store.page(conversation_id, None, 100))
        return page

    async def settle(self) -> None:
        """Let every reply in flight be stored."""
        for _ in range(200):
            if not any(self.svc.bus.in_flight(u) for u in list(self.svc.bus._by_user)):  # type: ignore[attr-defined]
                return
            await asyncio.sleep(0.01)
        raise AssertionError("replies still in flight")
