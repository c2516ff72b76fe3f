"""PostgreSQL's own CPU per turn: chat-server's two statements against the minimal server's two INSERTs.

On the 2-core machine the benchmarks share, PostgreSQL's work per turn takes CPU from the server
and the load generator, so it bounds turns/s as much as the server's. This measures it alone: one
connection plays turns in a loop, and the CPU time of its backend process (/proc/PID/stat: the
database must run on this machine) is divided by the turns played. Variants alternate, several
rounds, median reported:

- chat-server: the user message (conversation's next seq, client_id check, insert, the claim on its
  reply in replies_in_flight) and the reply (next seq, insert, the claim removed), as
  server/db/pg_turn_writes.py sends them;
- minimal: the table of the minimal server bench/against_minimal.sh runs, and its two
  autocommitted INSERTs.

    .venv/bin/python bench/pg_turn_cost.py --turns 3000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from typing import Any

import asyncpg

from server.config import Settings
from server.db.migrate import upgrade_to_head
from server.db.pg_turn_writes import APPEND_CLAIMING, APPEND_RELEASING, asyncpg_dsn
from server.db.store import append_params
from server.domain import Claim, unsaved, utcnow

MINIMAL_SCHEMA = """
CREATE TABLE min_conversations (id VARCHAR(36) PRIMARY KEY, user_id VARCHAR(36) NOT NULL, title TEXT,
  created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL);
CREATE TABLE min_messages (id VARCHAR(36) PRIMARY KEY,
  conversation_id VARCHAR(36) NOT NULL REFERENCES min_conversations (id), user_id VARCHAR(36) NOT NULL,
  role VARCHAR(16) NOT NULL, content TEXT NOT NULL, status VARCHAR(16) NOT NULL, client_id VARCHAR(64),
  reply_to VARCHAR(36), created_at DOUBLE PRECISION NOT NULL);
CREATE INDEX ON min_messages (conversation_id, created_at);
CREATE UNIQUE INDEX ON min_messages (user_id, client_id);
"""
MINIMAL_INSERT = "INSERT INTO min_messages VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
WORDS = "hello world " * 10


def backend_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def chat_server_turns(conn: asyncpg.Connection, turns: int) -> None:
    conversation = str(uuid.uuid4())
    now = utcnow()
    await conn.execute("INSERT INTO conversations (id, user_id, title, created_at, updated_at, last_seq) "
                       "VALUES ($1, 'u1', 't', $2, $2, 0)", conversation, now)
    for _ in range(turns):
        reply_id = str(uuid.uuid4())
        message = unsaved(message_id=str(uuid.uuid4()), conversation_id=conversation, role="user", content=WORDS,
                          status="complete", client_id=str(uuid.uuid4()))
        params = append_params(message, "u1", Claim(reply_id, "owner"))
        assert await conn.fetchval(APPEND_CLAIMING.sql, *APPEND_CLAIMING.args(params))
        reply = unsaved(message_id=reply_id, conversation_id=conversation, role="assistant",
                        content="You said: " + WORDS, status="complete", reply_to=message.id)
        params = append_params(reply, "u1", None)
        assert await conn.fetchval(APPEND_RELEASING.sql, *APPEND_RELEASING.args(params))


async def minimal_turns(conn: asyncpg.Connection, turns: int) -> None:
    conversation = str(uuid.uuid4())
    await conn.execute("INSERT INTO min_conversations VALUES ($1, 'u1', 't', $2, $2)", conversation, time.time())
    for _ in range(turns):
        message_id = str(uuid.uuid4())
        await conn.execute(MINIMAL_INSERT, message_id, conversation, "u1", "user", WORDS, "complete",
                           str(uuid.uuid4()), None, time.time())
        await conn.execute(MINIMAL_INSERT, str(uuid.uuid4()), conversation, "u1", "assistant", "You said: " + WORDS,
                           "complete", None, message_id, time.time())


async def main(args: argparse.Namespace) -> None:
    name = f"bench_pg_cost_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://{args.dsn.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"
    try:
        await upgrade_to_head(Settings(database_url=url))
        conn = await asyncpg.connect(asyncpg_dsn(url))
        await conn.execute(MINIMAL_SCHEMA)
        pid = conn.get_server_pid()
        results: dict[str, list[float]] = {"chat-server": [], "minimal": []}
        variants: dict[str, Any] = {"chat-server": chat_server_turns, "minimal": minimal_turns}
        for _ in range(args.rounds):
            for label, play in variants.items():
                before = backend_cpu_s(pid)
                await play(conn, args.turns)
                results[label].append((backend_cpu_s(pid) - before) / args.turns * 1e6)
        await conn.close()
        for label, values in results.items():
            print(f"{label}: PostgreSQL CPU {statistics.median(values):.0f} us/turn (median; rounds: "
                  f"{', '.join(f'{v:.0f}' for v in values)})")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a database to connect to for CREATE DATABASE (on this machine)")
    parser.add_argument("--turns", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
