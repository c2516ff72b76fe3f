#!/usr/bin/env python3
"""What reading a branch costs: a page of `history` in a deep conversation and in a wide one.

Three conversations are written straight into a fresh, migrated database (SQLite: a file in a
temporary directory; PostgreSQL: a bench_<random> database, dropped afterwards): a path of 100
messages, one of 10,000, and one of 100 whose message at depth 60 has 99 older siblings. Each is
read at its first page (GET /api/conversations/{id}/messages?limit=50) and at a page deep in the
path (`before=` the message three quarters of the way down): over HTTP through a chat-server
process (one keep-alive connection, one request at a time), then in-process through `tree.branch`
on a `Database`, the database part alone. Shapes and pages alternate in rounds, so that the
machine's drift spreads over all of them. A page should cost the same at depth 10,000 as at depth
100; the plan of each statement of a first page is printed for both (PostgreSQL: EXPLAIN (ANALYZE,
BUFFERS); SQLite: EXPLAIN QUERY PLAN).

    .venv/bin/python bench/history_depth.py                  # SQLite and PostgreSQL, 1000 requests a row
    .venv/bin/python bench/history_depth.py --db sqlite --requests 300
    .venv/bin/python bench/history_depth.py --quick          # smoke: SQLite, 20 requests a row
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from sqlalchemy import event, insert, update

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from run import CHAT_ENV, free_port, fresh_database, log, running  # noqa: E402

from server.config import Settings  # noqa: E402
from server.db import tree  # noqa: E402
from server.db.engine import make_engine  # noqa: E402
from server.db.migrate import upgrade_to_head  # noqa: E402
from server.db.schema import conversations, messages  # noqa: E402
from server.db.uow import Database  # noqa: E402

USER = "bench-history"
PAGE = 50
SIBLINGS, SIBLINGS_AT = 100, 60
CONTENT = " lorem ipsum dolor sit amet" * 8  # about 220 bytes a message


@dataclass
class Conversation:
    shape: str
    id: str
    path: list[str]  # the current branch, root first

    def before(self, page: str) -> str | None:
        return None if page == "first" else self.path[len(self.path) * 3 // 4]


def rows_of(depth: int, siblings_at: int | None) -> tuple[str, list[dict[str, Any]], list[str]]:
    """A conversation's messages: seq increasing, each the child of the one before on the path;
    at `siblings_at`, SIBLINGS - 1 older user messages with the same parent (earlier edits)."""
    conversation_id, start = str(uuid.uuid4()), datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    path: list[str] = []

    def add(parent: str | None, role: str) -> str:
        seq = len(rows) + 1
        rows.append({"id": str(uuid.uuid4()), "conversation_id": conversation_id, "user_id": USER, "seq": seq,
                     "role": role, "content": f"{role} {seq}:{CONTENT}", "status": "complete",
                     "reply_to": parent if role == "assistant" else None, "parent_id": parent,
                     "created_at": start + timedelta(milliseconds=seq)})
        return str(rows[-1]["id"])

    for depth_now in range(depth):
        parent = path[-1] if path else None
        if depth_now == siblings_at:
            for _ in range(SIBLINGS - 1):
                add(parent, "user")
        path.append(add(parent, "user" if depth_now % 2 == 0 else "assistant"))
    return conversation_id, rows, path


async def build(url: str) -> list[Conversation]:
    settings = Settings(database_url=url)
    await upgrade_to_head(settings)
    engine = make_engine(settings, pooled=False)
    built = []
    try:
        async with engine.begin() as conn:
            for shape, depth, siblings_at in (("depth 100", 100, None), ("depth 10,000", 10_000, None),
                                              ("100 siblings", 100, SIBLINGS_AT)):
                cid, rows, path = rows_of(depth, siblings_at)
                now = datetime.now(UTC)
                await conn.execute(insert(conversations).values(id=cid, user_id=USER, title=shape, created_at=now,
                                                                updated_at=now, last_seq=0, leaf_id=None))
                for i in range(0, len(rows), 2000):
                    await conn.execute(insert(messages), rows[i:i + 2000])
                await conn.execute(update(conversations).where(conversations.c.id == cid)
                                   .values(leaf_id=path[-1], last_seq=len(rows)))
                built.append(Conversation(shape, cid, path))
        if not settings.is_sqlite:
            async with engine.begin() as conn:  # what autovacuum would have done by now
                await conn.exec_driver_sql("ANALYZE")
    finally:
        await engine.dispose()
    return built


def check(ids: list[str], siblings: list[list[str]], conv: Conversation, page: str) -> None:
    """The page is the right one: the 50 messages of the path before `before` (or the leaf), and
    in the wide conversation the 100 siblings at their level."""
    before = conv.before(page)
    end = conv.path.index(before) if before else len(conv.path)
    if ids != conv.path[end - PAGE:end]:
        raise RuntimeError(f"{conv.shape}, {page} page: not the expected messages")
    if conv.shape == "100 siblings" and max(map(len, siblings)) != SIBLINGS:
        raise RuntimeError(f"{conv.shape}, {page} page: not {SIBLINGS} siblings")


def rotated(keys: list[Any], round_: int) -> list[Any]:
    return keys[round_ % len(keys):] + keys[:round_ % len(keys)]


def over_http(port: int, token: str, conv: Conversation, page: str, n: int) -> list[float]:
    before = conv.before(page)
    target = f"/api/conversations/{conv.id}/messages?limit={PAGE}" + (f"&before={before}" if before else "")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    try:
        for i in range(n):
            t = time.perf_counter()
            conn.request("GET", target, headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            body = response.read()
            times.append(time.perf_counter() - t)
            if response.status != 200:
                raise RuntimeError(f"GET {target}: {response.status} {body[:300]!r}")
            if i == 0:
                frame = json.loads(body)
                check([m["id"] for m in frame["messages"]], [m["siblings"] for m in frame["messages"]], conv, page)
    finally:
        conn.close()
    return times


async def in_process(db: Database, conv: Conversation, page: str, n: int) -> list[float]:
    before = conv.before(page)
    times = []
    for i in range(n):
        t = time.perf_counter()
        found = await db.read(lambda store: tree.branch(store, conv.id, USER, before, PAGE))
        times.append(time.perf_counter() - t)
        if i == 0:
            check([m.id for m in found.messages], [found.siblings[m.id] for m in found.messages], conv, page)
    return times


async def plans(db: Database, conv: Conversation) -> str:
    """The plan of each statement of a first page: EXPLAIN QUERY PLAN on SQLite, EXPLAIN (ANALYZE,
    BUFFERS) on PostgreSQL, each of the statement as `tree.branch` sent it."""

    def run(store: Any) -> str:
        sent: list[tuple[str, Any]] = []
        capture = lambda _c, _cur, sql, params, _ctx, _many: sent.append((sql, params))  # noqa: E731
        event.listen(store.conn, "before_cursor_execute", capture)
        tree.branch(store, conv.id, USER, None, PAGE)
        event.remove(store.conn, "before_cursor_execute", capture)
        explain = "EXPLAIN QUERY PLAN " if store.conn.dialect.name == "sqlite" else "EXPLAIN (ANALYZE, BUFFERS) "
        out = []
        for sql, params in sent:
            rows = store.conn.exec_driver_sql(explain + sql, params)
            out += ["  " + " ".join(sql.split())[:100] + " …", *("    " + str(row[-1])[:140] for row in rows)]
        return "\n".join(out)

    return str(await db.read(run))


def nearest_rank(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-p * len(ordered) // 100) - 1)] * 1000


def measure(kind: str, args: argparse.Namespace, workdir: Path) -> list[tuple[str, ...]]:
    label = {"sqlite": "SQLite", "postgres": "PostgreSQL"}[kind]
    with fresh_database(kind, workdir, args.pg_url) as (url, _):
        log(f"{label}: writing the conversations")
        convs = asyncio.run(build(url))
        secret = secrets.token_urlsafe(48)
        token = jwt.encode({"sub": USER, "iat": int(time.time())}, secret, algorithm="HS256")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}  # no stray settings
        env.update(CHAT_ENV, CHAT_DATABASE_URL=url, CHAT_AUTH_SECRET=secret)
        port = free_port()
        keys = [(c, page) for c in convs for page in ("first", "deep")]
        http_times: dict[Any, list[float]] = {(c.shape, p): [] for c, p in keys}
        db_times: dict[Any, list[float]] = {(c.shape, p): [] for c, p in keys}
        per_round = max(1, args.requests // args.rounds)

        with running([args.chat_server, "--host", "127.0.0.1", "--port", str(port)], env, workdir,
                     workdir / f"chat-server-{kind}.log", port):
            for c, page in keys:  # warm up: the server's first requests, the database's caches
                over_http(port, token, c, page, args.warmup)
            for round_ in range(args.rounds):
                log(f"{label}: round {round_ + 1}/{args.rounds}")
                for c, page in rotated(keys, round_):
                    http_times[c.shape, page] += over_http(port, token, c, page, per_round)

        async def database_part() -> list[str]:
            db = Database(make_engine(Settings(database_url=url)))
            try:
                for c, page in keys:
                    await in_process(db, c, page, args.warmup)
                for round_ in range(args.rounds):
                    for c, page in rotated(keys, round_):
                        db_times[c.shape, page] += await in_process(db, c, page, per_round)
                return [await plans(db, c) for c in convs[:2]]
            finally:
                await db.dispose()

        for c, plan in zip(convs, asyncio.run(database_part()), strict=False):
            print(f"\n{label}, {c.shape}, first page, the plan of each statement:\n{plan}")
    table = []
    for via, times in (("HTTP", http_times), ("tree.branch", db_times)):
        for (shape, page), ts in times.items():
            table.append((label, shape, "first" if page == "first" else "deep (before=)", via,
                          f"{nearest_rank(ts, 50):.2f}", f"{nearest_rank(ts, 99):.2f}", str(len(ts))))
    return table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--requests", type=int, default=1000, help="measured requests per row (default 1000)")
    p.add_argument("--rounds", type=int, default=20, help="rounds the requests are spread over")
    p.add_argument("--warmup", type=int, default=50, help="unmeasured requests per row first")
    p.add_argument("--quick", action="store_true", help="smoke: SQLite, 20 requests a row, one round")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
                   help="an admin connection: a bench_* database is created and dropped through it")
    p.add_argument("--chat-server", default=str(Path(sys.executable).parent / "chat-server"))
    args = p.parse_args()
    if args.quick:
        args.db, args.requests, args.rounds, args.warmup = ("sqlite" if args.db == "both" else args.db), 20, 1, 3
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    table: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="history-depth-") as tmp:
        for kind in (("sqlite", "postgres") if args.db == "both" else (args.db,)):
            table += measure(kind, args, Path(tmp))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{started}, page of {PAGE} messages, one request at a time; load average at the end {load}\n")
    head = ("database", "shape", "page", "via", "p50 ms", "p99 ms", "requests")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in table:
        print("| " + " | ".join(row) + " |")
    print("\ndepth 10,000 / depth 100, p50:")
    p50 = {row[:4]: float(row[4]) for row in table}
    for (db, shape, page, via), value in p50.items():
        if shape == "depth 10,000":
            print(f"  {db:<10} {page:<15} {via:<12} {value / p50[db, 'depth 100', page, via]:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
