#!/usr/bin/env python3
"""The ceiling: a small hand-written chat.v1 server that does a turn's work and nothing more.

bench/run.py measures chat-server against it. It speaks enough chat.v1 for bench/loadgen.py:
`ready` on connect (a fresh user id), then per message frame (JSON or plain text), in order on
each socket, the same statements and commit points as chat-server:

  1. one transaction: the (user_id, client_id) lookup, UPDATE conversations ... RETURNING last_seq
     (or INSERT a new conversation), INSERT the user message; COMMIT; then `ack`;
  2. `start`, one `delta` per word of "You said: <message>" (yielding to the loop before each;
     chat-server's echo backend with CHAT_ECHO_DELAY_MS=0 yields once every 32);
  3. one transaction: UPDATE ... RETURNING last_seq, INSERT the reply; COMMIT; then `done`.

No group commit, no ORM: raw SQL over one aiosqlite connection (writes serialised by a lock,
BEGIN IMMEDIATE ... COMMIT, WAL, synchronous=FULL, busy_timeout=10000) or an asyncpg pool of 10
(one transaction per commit point). Frames are chat-server's, encoded with orjson.

    python bench/ceiling.py --db sqlite:/tmp/ceiling.db --port 8100
    python bench/ceiling.py --db postgresql://postgres@127.0.0.1:5432/bench --port 8100

GET /healthz answers 200. No auth, history, cancel, or rate limits.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

MAX_CHARS = 32_000
MAX_FRAME = 12 * MAX_CHARS + 4096  # as chat-server: a content at the limit fits however escaped
WORD = re.compile(r"\S+\s*")

# chat-server's tables, less the columns a turn leaves NULL; the same keys and indexes.
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS conversations (id VARCHAR(36) PRIMARY KEY, user_id VARCHAR(255) NOT NULL,"
    " title VARCHAR(200) NOT NULL, created_at {ts} NOT NULL, updated_at {ts} NOT NULL, last_seq INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ix_conversations_user_updated ON conversations (user_id, updated_at)",
    "CREATE TABLE IF NOT EXISTS messages (id VARCHAR(36) PRIMARY KEY,"
    " conversation_id VARCHAR(36) NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,"
    " user_id VARCHAR(255) NOT NULL, seq INTEGER NOT NULL, role VARCHAR(16) NOT NULL, content TEXT NOT NULL,"
    " status VARCHAR(16) NOT NULL, client_id VARCHAR(64), reply_to VARCHAR(36), created_at {ts} NOT NULL,"
    " UNIQUE (conversation_id, seq), UNIQUE (user_id, client_id))",
    "CREATE INDEX IF NOT EXISTS ix_messages_reply_to ON messages (reply_to)",
]
BY_CLIENT_ID = "SELECT id, conversation_id FROM messages WHERE user_id = $1 AND client_id = $2"
NEXT_SEQ = ("UPDATE conversations SET last_seq = last_seq + 1, updated_at = $1 WHERE id = $2 AND user_id = $3"
            " RETURNING last_seq")
NEW_CONVERSATION = ("INSERT INTO conversations (id, user_id, title, created_at, updated_at, last_seq)"
                    " VALUES ($1, $2, $3, $4, $5, 1)")
INSERT_MESSAGE = ("INSERT INTO messages (id, conversation_id, user_id, seq, role, content, status, client_id,"
                  " reply_to, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
REPLY_OF = "SELECT id, content, status FROM messages WHERE reply_to = $1 ORDER BY seq DESC LIMIT 1"


class NotFound(Exception):
    pass


class Sqlite:
    """One aiosqlite connection; a lock keeps each transaction's statements together."""

    async def open(self, path: str) -> Sqlite:
        import aiosqlite

        self.conn = await aiosqlite.connect(path, isolation_level=None)  # BEGIN and COMMIT are ours
        self.lock = asyncio.Lock()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=10000", "foreign_keys=ON"):
            await self.conn.execute_fetchall(f"PRAGMA {pragma}")
        for ddl in SCHEMA:
            await self.conn.execute_fetchall(ddl.format(ts="DATETIME"))
        return self

    async def query(self, sql: str, *args: Any) -> list[Any]:
        return await self.conn.execute_fetchall(re.sub(r"\$\d+", "?", sql), args)

    async def run(self, work):  # type: ignore[no-untyped-def]
        async with self.lock:
            await self.conn.execute_fetchall("BEGIN IMMEDIATE")
            try:
                result = await work(self.query)
                await self.conn.execute_fetchall("COMMIT")
                return result
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.conn.execute_fetchall("ROLLBACK")
                raise

    @staticmethod
    def now() -> str:
        return datetime.now(UTC).isoformat(sep=" ")

    async def close(self) -> None:
        await self.conn.close()


class Postgres:
    """An asyncpg pool of 10; one connection and one transaction per commit point."""

    async def open(self, url: str) -> Postgres:
        import asyncpg

        self.pool = await asyncpg.create_pool(url, min_size=10, max_size=10)
        async with self.pool.acquire() as con:
            for ddl in SCHEMA:
                await con.execute(ddl.format(ts="TIMESTAMPTZ"))
        return self

    async def run(self, work):  # type: ignore[no-untyped-def]
        async with self.pool.acquire() as con, con.transaction():
            return await work(con.fetch)

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

    async def close(self) -> None:
        await self.pool.close()


def new_id() -> str:
    return str(uuid.uuid4())


async def send(ws: ServerConnection, frame: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(frame), text=True)


async def error(ws: ServerConnection, code: str, detail: str, client_id: Any = None) -> None:
    frame = {"type": "error", "code": code, "detail": detail}
    await send(ws, frame | ({"client_id": client_id} if isinstance(client_id, str) else {}))


async def turn(ws: ServerConnection, db: Sqlite | Postgres, user_id: str, state: dict[str, Any],
               content: str, client_id: str | None, explicit: bool, requested: str | None) -> None:
    async def accept(q):  # type: ignore[no-untyped-def]
        if client_id is not None:
            rows = await q(BY_CLIENT_ID, user_id, client_id)
            if rows:
                return rows[0][0], rows[0][1], True
        now = db.now()
        conversation_id, seq = (requested if explicit else state["conversation_id"]), None
        if conversation_id is not None:
            rows = await q(NEXT_SEQ, now, conversation_id, user_id)
            seq = rows[0][0] if rows else None
            if seq is None and explicit:
                raise NotFound(conversation_id)
        if seq is None:
            conversation_id, seq = new_id(), 1
            title = " ".join(content.split())[:80]
            await q(NEW_CONVERSATION, conversation_id, user_id, title, now, now)
        message_id = new_id()
        await q(INSERT_MESSAGE, message_id, conversation_id, user_id, seq, "user", content, "complete",
                client_id, None, now)
        return message_id, conversation_id, False

    try:
        message_id, conversation_id, duplicate = await db.run(accept)
    except NotFound:
        return await error(ws, "not_found", "no such conversation", client_id)
    except Exception as e:
        return await error(ws, "unavailable", f"not stored: {e}", client_id)
    state["conversation_id"] = conversation_id
    await send(ws, {"type": "ack", "client_id": client_id, "conversation_id": conversation_id,
                    "message_id": message_id, "duplicate": duplicate})
    if duplicate:
        rows = await db.run(lambda q: q(REPLY_OF, message_id))
        if rows and rows[0][2] != "interrupted":
            return await send(ws, {"type": "done", "conversation_id": conversation_id, "message_id": rows[0][0],
                                   "status": rows[0][2], "content": rows[0][1]})
    reply_id, pieces = new_id(), []
    await send(ws, {"type": "start", "conversation_id": conversation_id, "message_id": reply_id,
                    "reply_to": message_id})
    for piece in WORD.findall(f"You said: {content}"):
        await asyncio.sleep(0)
        pieces.append(piece)
        await send(ws, {"type": "delta", "message_id": reply_id, "content": piece})
    reply = "".join(pieces)

    async def store_reply(q):  # type: ignore[no-untyped-def]
        now = db.now()
        rows = await q(NEXT_SEQ, now, conversation_id, user_id)
        await q(INSERT_MESSAGE, reply_id, conversation_id, user_id, rows[0][0], "assistant", reply, "complete",
                None, message_id, now)

    try:
        await db.run(store_reply)
    except Exception as e:
        return await error(ws, "unavailable", f"reply not stored: {e}", client_id)
    await send(ws, {"type": "done", "conversation_id": conversation_id, "message_id": reply_id,
                    "status": "complete", "content": reply})


def parse(raw: str | bytes) -> tuple[str, Any, Any, bool, Any]:
    """(problem code or "", content, client_id, explicit conversation, conversation_id)."""
    if isinstance(raw, bytes):
        return "invalid", None, None, False, None
    if not raw.lstrip().startswith("{"):
        obj: Any = {"type": "message", "content": raw}
    else:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return "invalid", None, None, False, None
        if not isinstance(obj, dict) or obj.get("type") != "message":
            return ("ignore" if isinstance(obj, dict) and obj.get("type") == "cancel" else "invalid",
                    None, None, False, None)
    content, client_id = obj.get("content"), obj.get("client_id")
    explicit, requested = "conversation_id" in obj, obj.get("conversation_id")
    if not isinstance(content, str) or not content.strip() or not isinstance(client_id, str | None):
        return "invalid", content, client_id, explicit, requested
    if len(content) > MAX_CHARS:
        return "too_large", content, client_id, explicit, requested
    return "", content, client_id, explicit, requested


def make_handler(db: Sqlite | Postgres):  # type: ignore[no-untyped-def]
    async def handler(ws: ServerConnection) -> None:
        user_id, state = new_id(), {"conversation_id": None}
        try:
            await send(ws, {"type": "ready", "protocol": "chat.v1", "user_id": user_id, "conversation_id": None})
            async for raw in ws:  # the next frame is read when this turn is done: turns in order
                problem, content, client_id, explicit, requested = parse(raw)
                if problem == "ignore":
                    continue
                if problem:
                    await error(ws, problem, "the ceiling takes valid message frames only", client_id)
                    continue
                await turn(ws, db, user_id, state, content, client_id, explicit, requested)
        except ConnectionClosed:
            pass

    return handler


def health(connection: ServerConnection, request: Any) -> Any:
    if request.path == "/healthz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    return None


async def main() -> None:
    p = argparse.ArgumentParser(description="Ceiling chat.v1 server for bench/run.py.")
    p.add_argument("--db", required=True, help="sqlite:PATH or postgresql://...")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    args = p.parse_args()
    if args.db.startswith("sqlite:"):
        db: Sqlite | Postgres = await Sqlite().open(args.db.removeprefix("sqlite:"))
    else:
        db = await Postgres().open(args.db)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # websockets' defaults (keepalive pings every 20 s, ...), less compression; uvicorn's backlog.
    async with serve(make_handler(db), args.host, args.port, compression=None, max_size=MAX_FRAME,
                     process_request=health, backlog=2048):
        await stop.wait()
    await db.close()


if __name__ == "__main__":
    asyncio.run(main())
