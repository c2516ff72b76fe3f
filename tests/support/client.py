"""A chat.v1 client for tests: real WebSocket frames, plus the HTTP API beside it."""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

FRAME_TIMEOUT = 15.0


def aio(fn):  # type: ignore[no-untyped-def]
    """Run an `async def` test with asyncio.run (no plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def cid(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


class Refused(Exception):
    def __init__(self, how: str, code: int):
        super().__init__(f"refused: {how} {code}")
        self.how, self.code = how, code


@dataclass
class Turn:
    frames: list[dict[str, Any]] = field(default_factory=list)

    def first(self, kind: str) -> dict[str, Any] | None:
        return next((f for f in self.frames if f["type"] == kind), None)

    @property
    def ack(self) -> dict[str, Any] | None:
        return self.first("ack")

    @property
    def start(self) -> dict[str, Any] | None:
        return self.first("start")

    @property
    def done(self) -> dict[str, Any] | None:
        return self.first("done")

    @property
    def error(self) -> dict[str, Any] | None:
        return self.first("error")

    @property
    def deltas(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "delta"]

    @property
    def text(self) -> str:
        return "".join(d["content"] for d in self.deltas)

    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]


class Client:
    def __init__(self, ws: ClientConnection, ready: dict[str, Any]):
        self.ws = ws
        self.ready = ready

    @classmethod
    async def open(cls, server: Any, token: str | None = None, conversation_id: str | None = None,
                   origin: str | None = None, headers: dict[str, str] | None = None, sync: bool = False,
                   **kw: Any) -> Client:
        params = ["sync=1"] if sync else []
        if token:
            params.append(f"token={token}")
        if conversation_id:
            params.append(f"conversation_id={conversation_id}")
        url = server.ws_url + ("?" + "&".join(params) if params else "")
        try:
            ws = await connect(url, origin=origin, additional_headers=headers, open_timeout=15,  # type: ignore[arg-type]
                               ping_interval=None, close_timeout=2, max_size=None, **kw)
        except InvalidStatus as e:
            raise Refused("http", e.response.status_code) from e
        try:
            ready = json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT))
        except ConnectionClosed as e:
            raise Refused("close", e.rcvd.code if e.rcvd else 1006) from e
        assert ready["type"] == "ready", ready
        return cls(ws, ready)

    @property
    def token(self) -> str:
        return self.ready.get("token") or ""

    @property
    def user_id(self) -> str:
        return self.ready["user_id"]

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def message(self, content: str, client_id: str | None = None, **fields: Any) -> None:
        frame: dict[str, Any] = {"type": "message", "content": content, **fields}
        if client_id is not None:
            frame["client_id"] = client_id
        await self.send(frame)

    async def recv(self, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def expect(self, kind: str, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
        frame = await self.recv(timeout)
        assert frame["type"] == kind, f"expected {kind}, got {frame}"
        return frame

    async def expect_error(self, code: str, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
        frame = await self.expect("error", timeout)
        assert frame["code"] == code, frame
        assert frame["detail"].strip(), frame
        return frame

    async def collect(self, timeout: float = 30, stop_after_deltas: int | None = None) -> Turn:
        """Frames of one turn: until done, or an error before any start."""
        turn = Turn()
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            turn.frames.append(frame)
            if frame["type"] == "done":
                return turn
            if frame["type"] == "error" and turn.start is None:
                return turn
            if stop_after_deltas is not None and len(turn.deltas) >= stop_after_deltas:
                return turn

    async def turn(self, content: str, client_id: str | None = None, timeout: float = 30, **fields: Any) -> Turn:
        await self.message(content, client_id, **fields)
        return await self.collect(timeout)

    async def complete(self, content: str, client_id: str | None = None, **fields: Any) -> Turn:
        t = await self.turn(content, client_id, **fields)
        assert t.done is not None and t.done["status"] == "complete", t.frames
        return t

    async def history(self, conversation_id: str, **fields: Any) -> dict[str, Any]:
        await self.send({"type": "history", "conversation_id": conversation_id, **fields})
        while True:
            frame = await self.recv()
            if frame["type"] in ("history", "error"):
                return frame

    async def closed_code(self, timeout: float = 15) -> int | None:
        """Read until the server closes; the close code."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None

    async def close(self) -> None:
        await self.ws.close()


class Rest:
    def __init__(self, server: Any, token: str | None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=server.base_url, headers=headers, timeout=20)

    def conversations(self) -> list[dict[str, Any]]:
        r = self.http.get("/api/conversations")
        assert r.status_code == 200, r.text
        return r.json()["items"]

    def messages(self, conversation_id: str, **params: Any) -> httpx.Response:
        return self.http.get(f"/api/conversations/{conversation_id}/messages", params=params)

    def tree(self, conversation_id: str) -> dict[str, Any]:
        r = self.http.get(f"/api/conversations/{conversation_id}/tree")
        assert r.status_code == 200, r.text
        return r.json()

    def every_message(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every message of the tree, whole, oldest first: the paths to all of its leaves."""
        items = self.tree(conversation_id)["items"]
        parents = {i["parent_id"] for i in items}
        found: dict[str, dict[str, Any]] = {}
        for leaf in (i["id"] for i in items if i["id"] not in parents):
            for m in self.all_messages(conversation_id, leaf=leaf):
                found[m["id"]] = m
        return [found[i["id"]] for i in items]

    def all_messages(self, conversation_id: str, **params: Any) -> list[dict[str, Any]]:
        r = self.messages(conversation_id, limit=200, **params)
        assert r.status_code == 200, r.text
        return r.json()["messages"]

    def delete(self, conversation_id: str) -> httpx.Response:
        return self.http.delete(f"/api/conversations/{conversation_id}")


def api(server: Any, client: Client | None) -> httpx.Client:
    """The HTTP API as `client`'s user (its token); None: with no token at all."""
    headers = {"Authorization": f"Bearer {client.token}"} if client is not None else {}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=20)


async def next_of(c: Client, kind: str, timeout: float = 5) -> dict[str, Any]:
    """The next frame of `kind`, skipping others (a sync socket also hears replies)."""
    while True:
        frame = await c.recv(timeout)
        if frame["type"] == kind:
            return frame


async def poll(fn, until, timeout: float = 10.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if until(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval)
