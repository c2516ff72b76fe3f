#!/usr/bin/env python3
"""kill -9 under load: is every acknowledged message stored?

Starts chat-server on a fresh database (PostgreSQL by default; --db sqlite for a file), opens
--sockets sockets (each its own user, kept across restarts by its token) that send messages with
client_ids as fast as the server takes them, and kills the server with SIGKILL --kills times, each
after a random 0.3-2.5 s of load, restarting it on the same port. A socket that loses its server
reconnects and sends its unacknowledged message again with the same client_id, as a client's
outbox does. At the end it reads the messages table and counts:

- acked: (user, client_id) pairs the server acknowledged, and the message id each ack named;
- lost: acked pairs with no stored message, or stored under another id (must be 0);
- duplicates: client_ids stored more than once for a user (must be 0: the index forbids it);
- unanswered: stored user messages with no stored reply once the last server has swept (must be 0).

    .venv/bin/python bench/kill_stress.py --kills 20 --sockets 50
    .venv/bin/python bench/kill_stress.py --db sqlite --kills 5

Exit status 1 when anything acked was lost, or a message was left without a reply.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
CHAT_ENV = {
    "CHAT_LLM": "echo",
    "CHAT_RATE_LIMIT_PER_MINUTE": "1000000",
    "CHAT_MAX_FRAMES_PER_SECOND": "100000",
    "CHAT_OPEN_MODE_USERS_PER_MINUTE": "0",
    "CHAT_HTTP_REQUESTS_PER_MINUTE": "0",
    "CHAT_HTTP_REQUESTS_PER_MINUTE_PER_ADDRESS": "0",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, binary: str, env: dict[str, str], port: int, workdir: Path):
        self.binary, self.env, self.port, self.workdir = binary, env, port, workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.workdir / f"server-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([self.binary, "--host", "127.0.0.1", "--port", str(self.port)],
                                     env={**os.environ, **self.env}, cwd=self.workdir, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}: see {log.name}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise SystemExit("the server did not listen within 60 s")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Tally:
    acked: dict[tuple[str, str], str] = field(default_factory=dict)  # (user_id, client_id) -> message id
    sent: int = 0
    duplicates_acked: int = 0  # acks of a resend that named the original
    refused: int = 0  # error frames (unavailable, busy, ...)
    disconnects: int = 0


async def play(i: int, url: str, tally: Tally, stop: asyncio.Event, words: int) -> None:
    """One user's socket: send, wait for ack, read the reply to its end, again; across kills."""
    token: str | None = None
    user_id: str | None = None
    unacked: tuple[str, str] | None = None  # (client_id, content) sent but not acknowledged
    n = 0
    while not stop.is_set():
        try:
            async with connect(url + (f"?token={token}" if token else ""), open_timeout=5,
                               max_size=None) as ws:
                ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if ready.get("type") != "ready":
                    raise ConnectionError(ready)
                token = token or ready["token"]
                user_id = user_id or ready["user_id"]
                assert user_id == ready["user_id"]
                while not stop.is_set():
                    if unacked is None:
                        n += 1
                        unacked = (f"s{i}-m{n}-{uuid.uuid4().hex[:8]}",
                                   f"socket {i} message {n} " + " ".join(f"w{k}" for k in range(words)))
                    client_id, content = unacked
                    await ws.send(json.dumps({"type": "message", "content": content, "client_id": client_id}))
                    tally.sent += 1
                    while True:  # until this message's turn is over
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                        kind = frame.get("type")
                        if kind == "ack" and frame.get("client_id") == client_id:
                            tally.acked[(user_id, client_id)] = frame["message_id"]
                            tally.duplicates_acked += bool(frame.get("duplicate"))
                            unacked = None
                        elif kind == "error":
                            tally.refused += 1
                            await asyncio.sleep(0.05)
                            break  # not acknowledged: sent again, same client_id
                        elif kind == "done":
                            break
        except (TimeoutError, OSError, ConnectionError, EOFError):
            tally.disconnects += 1
            await asyncio.sleep(0.05 + random.random() * 0.1)
        except Exception as e:  # websockets' ConnectionClosed and InvalidStatus/InvalidMessage
            if type(e).__module__.startswith("websockets"):
                tally.disconnects += 1
                await asyncio.sleep(0.05 + random.random() * 0.1)
            else:
                raise


async def pg_admin(url: str, sql: str) -> None:
    import asyncpg
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def stored_messages(db_url: str) -> list[tuple[str, str, str | None, str, str | None]]:
    """(id, user_id, client_id, role, reply_to) of every message."""
    if db_url.startswith("sqlite"):
        import sqlite3
        conn = sqlite3.connect(db_url.split("///", 1)[1])
        try:
            return conn.execute("SELECT id, user_id, client_id, role, reply_to FROM messages").fetchall()
        finally:
            conn.close()
    import asyncpg
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT id, user_id, client_id, role, reply_to FROM messages")
        return [tuple(r) for r in rows]  # type: ignore[misc]
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="kill-stress-"))
    admin = args.pg_url
    dbname = f"kill_stress_{uuid.uuid4().hex[:10]}"
    if args.db == "postgres":
        await pg_admin(admin, f"CREATE DATABASE {dbname}")
        db_url = "postgresql+asyncpg://" + admin.split("://", 1)[1].rsplit("/", 1)[0] + "/" + dbname
    else:
        db_url = f"sqlite+aiosqlite:///{workdir}/chat.db"
    port = free_port()
    env = {**CHAT_ENV, "CHAT_DATABASE_URL": db_url, "CHAT_ECHO_DELAY_MS": str(args.echo_delay_ms)}
    server = Server(args.chat_server, env, port, workdir)
    tally = Tally()
    stop = asyncio.Event()
    rng = random.Random(args.seed)
    try:
        server.start()
        url = f"ws://127.0.0.1:{port}/ws"
        sockets = [asyncio.create_task(play(i, url, tally, stop, args.words)) for i in range(args.sockets)]
        for k in range(args.kills):
            await asyncio.sleep(rng.uniform(args.min_s, args.max_s))
            acked_before = len(tally.acked)
            server.kill()
            print(f"kill {k + 1}/{args.kills}: {acked_before} acked so far, {tally.sent} sent", file=sys.stderr)
            await asyncio.sleep(rng.uniform(0, 0.3))
            await asyncio.to_thread(server.start)
        await asyncio.sleep(args.settle_s)  # load on the last server, so the resends land
        stop.set()
        await asyncio.wait(sockets, timeout=40)
        for t in sockets:
            t.cancel()
        # The last server stops cleanly (replies in flight stored as interrupted); one more start
        # sweeps anything a kill left.
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        await asyncio.sleep(2)
        await asyncio.to_thread(server.stop)

        rows = await stored_messages(db_url)
        users = {}
        replied = {r[4] for r in rows if r[3] == "assistant"}
        per_client: dict[tuple[str, str], list[str]] = {}
        for message_id, user_id, client_id, role, _ in rows:
            if role == "user" and client_id is not None:
                per_client.setdefault((user_id, client_id), []).append(message_id)
                users[message_id] = (user_id, client_id)
        lost = [key for key, message_id in tally.acked.items() if per_client.get(key) != [message_id]]
        duplicates = sum(len(ids) > 1 for ids in per_client.values())
        unanswered = [mid for mid in users if mid not in replied]
        stored_unacked = len(set(per_client) - set(tally.acked))
        result = {"db": args.db, "kills": args.kills, "sockets": args.sockets, "sent": tally.sent,
                  "acked": len(tally.acked), "stored_user_messages": len(users), "lost": len(lost),
                  "duplicates": duplicates, "unanswered": len(unanswered),
                  "stored_but_never_acked": stored_unacked, "acks_of_resends_as_duplicate": tally.duplicates_acked,
                  "refused": tally.refused, "disconnects": tally.disconnects}
        print(json.dumps(result))
        if lost:
            print("lost:", lost[:10], file=sys.stderr)
        if unanswered:
            print("unanswered:", unanswered[:10], file=sys.stderr)
        return 1 if lost or unanswered or duplicates else 0
    finally:
        server.stop()
        if args.db == "postgres" and not args.keep:
            await pg_admin(admin, f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        print(f"logs: {workdir}", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description="kill -9 under load; every acknowledged message must be stored")
    p.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--sockets", type=int, default=50)
    p.add_argument("--words", type=int, default=20)
    p.add_argument("--echo-delay-ms", type=int, default=0)
    p.add_argument("--min-s", type=float, default=0.3, help="shortest load between kills")
    p.add_argument("--max-s", type=float, default=2.5, help="longest load between kills")
    p.add_argument("--settle-s", type=float, default=3.0, help="load on the last server before stopping")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep the database")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--chat-server", default=str(Path(sys.executable).parent / "chat-server"))
    args = p.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
