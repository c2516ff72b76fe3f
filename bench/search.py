#!/usr/bin/env python3
"""What full-text search costs: GET /api/search over 100,000 messages of 100 users.

A chat-server process (echo backend without a pause, token mode) is started on a fresh
database (SQLite: a file in a temporary directory; PostgreSQL: a chat_bench_search_<pid>
database, dropped afterwards) and migrates it. The messages are made through the server's own
WebSocket turns, so the index is kept as in production (PostgreSQL: the GIN index; SQLite: the
FTS5 triggers): each user sends --messages-per-user / 2 messages in conversations of 5 turns
(10 messages: each message and its echo, "You said: …"), over several sockets at a time. The
texts draw their words from a vocabulary of VOCABULARY words with a Zipf distribution (the top
ranks are English function words, the rest made-up words), so that a few words are in most
messages and most words in a handful.

Then, over HTTP (httpx, one keep-alive connection, one request at a time), --queries searches of
each class, for random users, classes taking turns:

- rare:       a word of the user's that is in at most RARE_MAX messages of all users
- common:     one of the COMMON top-ranked words (in most of the user's messages)
- two words:  two words (neither among the top 10) of one of the user's messages
- two common: two of the COMMON top-ranked words
- nothing:    a word that is in no message
- page 2:     a common word's second page (`before` = the first page's last hit)

Every answer is checked against the texts the benchmark made: the number of hits (the user's
messages holding every word, and their echoes), has_more, newest first, every snippet marked.
On PostgreSQL the database gets VACUUM ANALYZE after the fill (what autovacuum would have done
by then: it also empties the GIN index's pending list). Then the index's size (PostgreSQL:
pg_relation_size; SQLite: the pages of messages_fts's shadow tables, from the dbstat virtual
table) and the plan of each statement of the search (PostgreSQL: EXPLAIN (ANALYZE, BUFFERS);
SQLite: EXPLAIN QUERY PLAN).

    .venv/bin/python bench/search.py --db both                    # 100 users x 1000 messages
    .venv/bin/python bench/search.py --db sqlite --users 3 --messages-per-user 20 --queries 5
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from sqlalchemy import event

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from run import CHAT_ENV, free_port, log, pg_admin, running  # noqa: E402

from server.config import Settings  # noqa: E402
from server.db import search  # noqa: E402
from server.db.engine import make_engine  # noqa: E402
from server.db.uow import Database  # noqa: E402

try:
    import orjson

    def dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode()

    loads = orjson.loads
except ImportError:  # pragma: no cover
    dumps, loads = json.dumps, json.loads  # type: ignore[assignment]

VOCABULARY = 30_000
ZIPF_S = 1.0
WORDS_PER_MESSAGE = (6, 24)
TURNS_PER_CONVERSATION = 5  # 10 messages: each message and its echo
COMMON = 3  # "common" and "two common" draw from the top COMMON ranks
RARE_MAX = 5
PAGE = 20
SOCKETS = 100  # at most, while filling (several per user when there are few users)
RETRIES = 5  # a turn answered `unavailable` (a busy shared database) is sent again, same client_id
FUNCTION_WORDS = ("the and to of a in is that it for on with as was this but be at not have are or "
                  "from by they we his her an my there what so if about which").split()
CLASSES = ("rare", "common", "two words", "two common", "nothing", "page 2")
DB_LABEL = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


# -- the texts ----------------------------------------------------------------------------------
def vocabulary(rng: random.Random) -> list[str]:
    """Words by rank: English function words, then made-up ones of 2 to 4 syllables."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    words, seen = list(FUNCTION_WORDS), set(FUNCTION_WORDS) | {"you", "said"}  # the echo's own words
    while len(words) < VOCABULARY:
        w = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


@dataclass
class Corpus:
    users: list[str]
    vocab: list[str]
    texts: dict[str, list[str]]  # user -> the texts of their messages, in the order sent
    words: dict[str, list[frozenset[str]]] = field(default_factory=dict)  # the same, as word sets
    doc_freq: Counter[str] = field(default_factory=Counter)  # word -> how many user messages hold it

    @classmethod
    def make(cls, n_users: int, per_user: int, seed: int) -> Corpus:
        rng = random.Random(seed)
        vocab = vocabulary(rng)
        cum = list(_accumulate([1 / (r + 1) ** ZIPF_S for r in range(len(vocab))]))
        users = [f"bench-search-{i:04d}" for i in range(n_users)]
        corpus = cls(users, vocab, {})
        for user in users:
            texts, sets = [], []
            for _ in range(per_user // 2):
                ws = rng.choices(vocab, cum_weights=cum, k=rng.randint(*WORDS_PER_MESSAGE))
                text = ws[0].capitalize() + "".join(("," if rng.random() < 0.08 else "") + " " + w for w in ws[1:])
                texts.append(text + rng.choice(".....?!"))
                sets.append(frozenset(ws))
                corpus.doc_freq.update(sets[-1])
            corpus.texts[user], corpus.words[user] = texts, sets
        return corpus

    def expected(self, user: str, words: list[str]) -> int:
        """How many hits: the user's messages holding every word, and the echo of each."""
        want = {w.lower() for w in words}
        return 2 * sum(1 for s in self.words[user] if want <= s)


def _accumulate(values: list[float]) -> Iterator[float]:
    total = 0.0
    for v in values:
        total += v
        yield total


@dataclass
class Query:
    cls: str
    user: str
    q: str
    expected: int  # hits in all
    before: str | None = None  # page 2: the first page's last hit


def make_queries(corpus: Corpus, n: int, rng: random.Random) -> dict[str, list[Query]]:
    top10 = set(corpus.vocab[:10])
    out: dict[str, list[Query]] = {c: [] for c in CLASSES}
    for _ in range(n):
        user = rng.choice(corpus.users)
        sets = corpus.words[user]
        mine = sorted(set().union(*sets))
        rare = [w for w in mine if corpus.doc_freq[w] <= RARE_MAX] or [min(mine, key=corpus.doc_freq.__getitem__)]
        word = rng.choice(rare)
        out["rare"].append(Query("rare", user, word, corpus.expected(user, [word])))
        word = rng.choice(corpus.vocab[:COMMON])
        out["common"].append(Query("common", user, word, corpus.expected(user, [word])))
        for _attempt in range(50):
            words = sorted(rng.choice(sets) - top10)
            if len(words) >= 2:
                break
        else:
            words = sorted(rng.choice(sets))
        pair = rng.sample(words, 2) if len(words) >= 2 else words
        out["two words"].append(Query("two words", user, " ".join(pair), corpus.expected(user, pair)))
        pair = rng.sample(corpus.vocab[:COMMON], 2)
        out["two common"].append(Query("two common", user, " ".join(pair), corpus.expected(user, pair)))
        while (word := "zq" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=6))) in corpus.doc_freq:
            pass
        out["nothing"].append(Query("nothing", user, word, 0))
        word = rng.choice(corpus.vocab[:COMMON])
        out["page 2"].append(Query("page 2", user, word, corpus.expected(user, [word])))
    return out


# -- the database and the server ----------------------------------------------------------------
@contextlib.contextmanager
def fresh_database(kind: str, workdir: Path, admin_url: str) -> Iterator[str]:
    """A new empty database, chat-server's CHAT_DATABASE_URL; PostgreSQL's is dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / f'search-{secrets.token_hex(4)}.db'}"
        return
    name = f"chat_bench_search_{os.getpid()}"
    asyncio.run(pg_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(pg_admin(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        plain = urlsplit(admin_url)._replace(path=f"/{name}").geturl()
        yield plain.replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        try:
            asyncio.run(pg_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except Exception as e:  # a leftover database is harmless
            log(f"  could not drop database {name}: {e!r}")


def plain_pg_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def fill(port: int, corpus: Corpus, tokens: dict[str, str], timeout: float) -> dict[str, Any]:
    """Every user's messages, through WebSocket turns: conversations of TURNS_PER_CONVERSATION
    turns, dealt to up to SOCKETS sockets (at most 10 per user: the server's limit)."""
    from websockets.asyncio.client import connect

    per_user = max(1, min(10, SOCKETS // len(corpus.users)))
    done = retried = 0

    async def socket(user: str, k: int) -> None:
        nonlocal done, retried
        texts = corpus.texts[user]
        starts = range(k * TURNS_PER_CONVERSATION, len(texts), per_user * TURNS_PER_CONVERSATION)
        async with connect(f"ws://127.0.0.1:{port}/ws?token={tokens[user]}", ping_interval=None, max_size=None,
                           compression=None, open_timeout=timeout) as ws:
            ready = loads(await ws.recv())
            if ready.get("type") != "ready":
                raise RuntimeError(f"first frame {ready!r}")
            for start in starts:
                conversation: str | None = None
                for i in range(start, min(start + TURNS_PER_CONVERSATION, len(texts))):
                    for attempt in range(RETRIES + 1):
                        await ws.send(dumps({"type": "message", "content": texts[i],
                                             "conversation_id": conversation, "client_id": f"{user}-{i}"}))
                        async with asyncio.timeout(timeout):
                            frame = await turn(ws)
                            if frame.get("type") == "ack":
                                conversation = frame["conversation_id"]
                                frame = await turn(ws)
                        if frame.get("type") == "done" and frame.get("status") == "complete" \
                                and frame.get("content") == f"You said: {texts[i]}":
                            break
                        if frame.get("code") != "unavailable" or attempt == RETRIES:
                            raise RuntimeError(f"turn {user}/{i}: {frame!r}"[:300])
                        retried += 1  # "nothing was changed: try again", with the same client_id
                        await asyncio.sleep(0.5)
                    done += 1

    async def turn(ws: Any) -> dict[str, Any]:
        """The next ack, done or error frame."""
        while True:
            raw = await ws.recv()
            if not raw.startswith('{"type":"delta"'):
                frame = loads(raw)
                if frame.get("type") in ("ack", "done", "error"):
                    return frame  # type: ignore[no-any-return]

    async def progress(total: int, t0: float) -> None:
        while True:
            await asyncio.sleep(10)
            log(f"  {done}/{total} turns, {done / (time.perf_counter() - t0):.0f} turns/s")

    total = sum(len(t) for t in corpus.texts.values())
    t0 = time.perf_counter()
    ticker = asyncio.ensure_future(progress(total, t0))
    try:
        await asyncio.gather(*(socket(u, k) for u in corpus.users for k in range(per_user)))
    finally:
        ticker.cancel()
    seconds = time.perf_counter() - t0
    return {"turns": done, "messages": 2 * done, "sockets": per_user * len(corpus.users),
            "seconds": round(seconds, 2), "turns_per_s": round(done / seconds, 1), "retried_unavailable": retried}


# -- the queries --------------------------------------------------------------------------------
def ask(client: httpx.Client, token: str, q: str, before: str | None) -> tuple[float, dict[str, Any]]:
    params = {"q": q, "limit": str(PAGE)} | ({"before": before} if before else {})
    t = time.perf_counter()
    r = client.get("/api/search", params=params, headers={"Authorization": f"Bearer {token}"})
    elapsed = time.perf_counter() - t
    if r.status_code != 200:
        raise RuntimeError(f"GET /api/search?q={q!r}: {r.status_code} {r.text[:300]}")
    return elapsed, r.json()


def check(query: Query, body: dict[str, Any], page: int) -> str | None:
    """What is wrong with an answer, or None."""
    items = body["items"]
    left = query.expected - PAGE * (page - 1)
    want = max(0, min(PAGE, left))
    if len(items) != want or body["has_more"] != (left > PAGE):
        return (f"{query.cls} q={query.q!r} page {page}: {len(items)} hits, has_more={body['has_more']}; "
                f"expected {want} of {query.expected}")
    stamps = [i["created_at"] for i in items]
    if stamps != sorted(stamps, reverse=True):
        return f"{query.cls} q={query.q!r}: not newest first"
    if any("<mark>" not in i["snippet"] for i in items):
        return f"{query.cls} q={query.q!r}: a snippet without <mark>"
    return None


def measure_queries(port: int, tokens: dict[str, str], queries: dict[str, list[Query]],
                    warmup: int) -> tuple[dict[str, list[float]], list[str]]:
    """The first `warmup` queries of each class warm up (unmeasured) and are dropped from `queries`."""
    times: dict[str, list[float]] = {c: [] for c in CLASSES}
    problems: list[str] = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for cls in CLASSES:  # warm up (unmeasured): the connection, the server's code, the caches
            for query in queries[cls][:warmup]:
                ask(client, tokens[query.user], query.q, None)
            queries[cls] = queries[cls][warmup:]
        for query in queries["page 2"]:  # the first pages (unmeasured), for `before`
            _, body = ask(client, tokens[query.user], query.q, None)
            problems += filter(None, [check(query, body, 1)])
            query.before = body["items"][-1]["message_id"] if body["items"] else None
        n = len(queries["rare"])
        for i in range(n):
            for cls in CLASSES[i % len(CLASSES):] + CLASSES[:i % len(CLASSES)]:
                query = queries[cls][i]
                if cls == "page 2" and query.before is None:
                    continue  # the user has no hit of that word: no second page to ask for
                elapsed, body = ask(client, tokens[query.user], query.q, query.before)
                times[cls].append(elapsed)
                problems += filter(None, [check(query, body, 2 if cls == "page 2" else 1)])
    return times, problems


# -- sizes and plans ----------------------------------------------------------------------------
async def pg_sizes(url: str) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(plain_pg_url(url), timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT pg_relation_size('ix_messages_search') AS index_bytes, "
            "pg_relation_size('messages') AS messages_table_bytes, "
            "pg_total_relation_size('messages') AS messages_total_bytes, "
            "pg_database_size(current_database()) AS database_bytes, "
            "(SELECT count(*) FROM messages) AS messages")
        return dict(row)
    finally:
        await conn.close()


async def pg_vacuum(url: str) -> float:
    import asyncpg

    conn = await asyncpg.connect(plain_pg_url(url), timeout=10)
    try:
        t = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE) messages")
        return time.perf_counter() - t
    finally:
        await conn.close()


def sqlite_sizes(path: Path) -> dict[str, Any]:
    """From the dbstat virtual table (every b-tree's pages), after the server has stopped (its
    last connection checkpointed the WAL into the file)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        pages = dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
        count = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    finally:
        conn.close()
    fts = {name: size for name, size in pages.items() if name.startswith("messages_fts")}
    table_and_indexes = sum(size for name, size in pages.items()
                            if name == "messages" or name.startswith(("ix_messages", "sqlite_autoindex_messages")))
    wal = Path(f"{path}-wal")
    return {"index_bytes": sum(fts.values()), "index_tables": fts, "messages_table_bytes": pages.get("messages", 0),
            "messages_total_bytes": table_and_indexes, "database_bytes": path.stat().st_size,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0, "messages": count}


async def plans(url: str, samples: list[Query]) -> dict[str, list[str]]:
    """The plan of each statement of one search of each sample, as `search.search` sent it."""
    db = Database(make_engine(Settings(database_url=url)))

    def run(store: Any, query: Query) -> list[str]:
        sent: list[tuple[str, Any]] = []
        capture = lambda _c, _cur, sql, params, _ctx, _many: sent.append((sql, params))  # noqa: E731
        event.listen(store.conn, "before_cursor_execute", capture)
        try:
            search.search(store, query.user, query.q, query.before, PAGE)
        finally:
            event.remove(store.conn, "before_cursor_execute", capture)
        sqlite = store.conn.dialect.name == "sqlite"
        out = []
        for sql, params in sent:
            explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN (ANALYZE, BUFFERS) "
            rows = store.conn.exec_driver_sql(explain + sql, params)
            out += ["  " + " ".join(sql.split())[:160] + " …",
                    *("    " + (" " * 3 * _depth(row, rows_seen) if sqlite else "") + str(row[-1])[:150]
                      for rows_seen in [{}] for row in rows)]
        return out

    try:
        return {f"{q.cls} (q={q.q!r}, {q.expected} hits in all)": await db.read(lambda store, q=q: run(store, q))
                for q in samples}
    finally:
        await db.dispose()


def _depth(row: Any, seen: dict[int, int]) -> int:
    """SQLite's EXPLAIN QUERY PLAN rows: (id, parent, notused, detail); the depth of `row`."""
    seen[row[0]] = seen.get(row[1], -1) + 1
    return seen[row[0]]


# -- one database -------------------------------------------------------------------------------
def ms(values: list[float], p: int | None) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    value = ordered[-1] if p is None else ordered[max(0, -(-p * len(ordered) // 100) - 1)]
    return round(value * 1000, 2)


def measure(kind: str, args: argparse.Namespace, workdir: Path, corpus: Corpus) -> dict[str, Any]:
    label = DB_LABEL[kind]
    secret = secrets.token_urlsafe(48)
    now = int(time.time())
    tokens = {u: jwt.encode({"sub": u, "iat": now}, secret, algorithm="HS256") for u in corpus.users}
    queries = make_queries(corpus, args.queries + args.warmup, random.Random(args.seed + 1))
    result: dict[str, Any] = {}
    with fresh_database(kind, workdir, args.pg_url) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}  # no stray settings
        env.update(CHAT_ENV, CHAT_DATABASE_URL=url, CHAT_AUTH_SECRET=secret, CHAT_LOG_LEVEL="warning")
        port = free_port()
        with running([args.chat_server, "--host", "127.0.0.1", "--port", str(port)], env, workdir,
                     workdir / f"chat-server-{kind}.log", port):
            log(f"{label}: making {sum(map(len, corpus.texts.values())) * 2} messages through WebSocket turns")
            result["fill"] = asyncio.run(fill(port, corpus, tokens, args.timeout))
            log(f"{label}: {result['fill']}")
            if kind == "postgres":
                result["sizes_before_vacuum"] = asyncio.run(pg_sizes(url))
                result["vacuum_analyze_s"] = round(asyncio.run(pg_vacuum(url)), 2)
            log(f"{label}: {args.queries} searches of each class")
            times, problems = measure_queries(port, tokens, queries, args.warmup)
            if kind == "postgres":
                result["sizes"] = asyncio.run(pg_sizes(url))
        if kind == "sqlite":
            result["sizes"] = sqlite_sizes(Path(url.split("///", 1)[1]))
        samples = _plan_samples(queries)
        result["plans"] = asyncio.run(plans(url, samples))
    result["classes"] = {
        cls: {"p50_ms": ms(ts, 50), "p99_ms": ms(ts, 99), "max_ms": ms(ts, None), "queries": len(ts),
              "mean_hits_in_all": round(sum(q.expected for q in queries[cls]) / max(1, len(queries[cls])), 1)}
        for cls, ts in times.items()}
    result["problems"] = problems[:20]
    result["problem_count"] = len(problems)
    for line in problems[:5]:
        log(f"  WRONG ANSWER: {line}")
    return result


def _plan_samples(queries: dict[str, list[Query]]) -> list[Query]:
    """One query of each class, of the same user where it can (the one with the most common hits)."""
    page2 = max((q for q in queries["page 2"] if q.before), key=lambda q: q.expected, default=None)
    out = []
    for cls in CLASSES:
        pool = [q for q in queries[cls] if cls != "page 2" or q.before]
        if cls == "page 2":
            if page2 is not None:
                out.append(page2)
            continue
        if pool:
            out.append(max(pool, key=lambda q: q.expected) if cls in ("common", "two common") else pool[0])
    return out


# -- the report ---------------------------------------------------------------------------------
def print_report(results: dict[str, Any], args: argparse.Namespace, corpus: Corpus, started: str) -> None:
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    n_messages = 2 * sum(map(len, corpus.texts.values()))
    print(f"\n{started}: {n_messages} messages of {len(corpus.users)} users, a page of {PAGE} hits, "
          f"one request at a time over HTTP; load average at the end {load}\n")
    head = ("database", "class", "p50 ms", "p99 ms", "max ms", "queries", "hits in all (mean)")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for kind, r in results.items():
        for cls, c in r["classes"].items():
            print(f"| {DB_LABEL[kind]} | {cls} | {c['p50_ms']} | {c['p99_ms']} | {c['max_ms']} | {c['queries']} | "
                  f"{c['mean_hits_in_all']} |")
    print()
    for kind, r in results.items():
        s, f = r["sizes"], r["fill"]
        mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
        extra = (f" (before VACUUM: {mib(r['sizes_before_vacuum']['index_bytes'])}; VACUUM ANALYZE "
                 f"{r['vacuum_analyze_s']} s)" if kind == "postgres" else
                 " (" + ", ".join(f"{n} {mib(b)}" for n, b in sorted(s["index_tables"].items())) + ")")
        print(f"{DB_LABEL[kind]}: index {mib(s['index_bytes'])}{extra}; "
              f"messages table {mib(s['messages_table_bytes'])}, "
              f"with its indexes {mib(s['messages_total_bytes'])}; database {mib(s['database_bytes'])}; "
              f"{s['messages']} messages; made in {f['seconds']} s ({f['turns_per_s']} turns/s, "
              f"{f['sockets']} sockets); wrong answers: {r['problem_count']}")
    for kind, r in results.items():
        for name, lines in r["plans"].items():
            print(f"\n{DB_LABEL[kind]}, {name}:")
            print("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--messages-per-user", type=int, default=1000, help="even: each turn stores two (default 1000)")
    p.add_argument("--queries", type=int, default=200, help="measured searches per class (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured searches per class first")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a turn may take")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
                   help="an admin connection: a chat_bench_search_<pid> database is created and dropped through it")
    p.add_argument("--chat-server", default=str(Path(sys.executable).parent / "chat-server"))
    args = p.parse_args()
    if args.messages_per_user < 2 or args.users < 1 or args.queries < 1:
        p.error("--users, --queries >= 1 and --messages-per-user >= 2")
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    corpus = Corpus.make(args.users, args.messages_per_user, args.seed)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        for kind in (("sqlite", "postgres") if args.db == "both" else (args.db,)):
            results[kind] = measure(kind, args, Path(tmp), corpus)
    print_report(results, args, corpus, started)
    if args.json:
        common_share = {w: round(corpus.doc_freq[w] / max(1, sum(map(len, corpus.texts.values()))), 3)
                        for w in corpus.vocab[:COMMON]}
        args.json.write_text(json.dumps({
            "started": started, "seconds": round(time.perf_counter() - t0, 1),
            "load_average": os.getloadavg(), "cores": os.cpu_count(),
            "params": {"users": args.users, "messages_per_user": args.messages_per_user, "queries": args.queries,
                       "warmup": args.warmup, "seed": args.seed, "page": PAGE, "vocabulary": VOCABULARY,
                       "zipf_s": ZIPF_S, "words_per_message": WORDS_PER_MESSAGE, "rare_max": RARE_MAX,
                       "common_words_share_of_messages": common_share},
            "results": results}, indent=2, default=str))
    wrong = sum(r["problem_count"] for r in results.values())
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
