#!/usr/bin/env python3
"""Long-stream capacity: how many sockets can each stream a long, slow reply at once.

Each of N sockets plays turns in a closed loop (the next message after `done`) for --duration
seconds; a turn's reply is 300 deltas at about 30 a second (the echo backend sleeps --delay-ms
before each delta: chat-server's CHAT_ECHO_DELAY_MS, the minimal servers' BENCH_ECHO_DELAY_MS).
The sockets' first messages are spread over --ramp seconds so that replies are not in lockstep,
and the measurement window starts when the ramp ends.

Lateness, without server timestamps: a reply's schedule is anchored at its first delta's arrival;
delta i (1-based) is due at first + (i-1) x delay, and its lateness is arrival - due. The
lateness an idle server shows (N=1, measured first on each server) is the echo's own sleep drift:
its median is subtracted from every figure. N rises through --ns until p99 lateness passes
--limit-ms (250); that N and every larger one are not run.

Per server and N: p50/p99 lateness, turns completed in the window, the server's CPU % and RSS
(/proc/PID), CPU µs per delta, CPU % and KiB of RSS per stream, and the load generator's own CPU %.

    .venv/bin/python bench/long_streams.py --servers chat-sqlite,chat-pg,raw-sqlite,raw-pg \\
        --ns 50,100,200,400,800,1200,1600 --duration 30

Servers: chat-sqlite, chat-pg (chat-server, fresh database each run), raw-sqlite
(raw_ws_sqlite.py, BENCH_SQLITE_SYNC=FULL), raw-pg (raw_ws_pg.py, BENCH_ORJSON=1); the minimal
servers come from --minimal-dir (default /work/shared/bench). PostgreSQL: --pg-url (a fresh
bench_* database per run, dropped after). --json PATH writes every result.

The load generator is one process, a raw WebSocket client on asyncio.Protocol (uvloop if
importable): a delta is recognised by its first bytes, not parsed, and costs one float appended
to a preallocated array; only other frames go through orjson.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import struct
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402  (bench/loadgen.py: a process's CPU seconds and RSS from /proc)
import run as runner  # noqa: E402  (bench/run.py: fresh databases, free ports, health wait)

try:
    import orjson

    loads = orjson.loads

    def dumpb(obj: Any) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover
    loads = json.loads

    def dumpb(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

SERVERS = ("chat-sqlite", "chat-pg", "raw-sqlite", "raw-pg")
DELTAS = 300  # deltas per reply: chat-server "You said: " + 298 words; minimal "echo: " + 299 words


# -- the client -----------------------------------------------------------------------------------
class Recorder:
    """Everything the sockets record, in flat arrays: one float per delta."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.measuring = False
        self.lateness = array("d")  # seconds, deltas that arrived in the window
        self.gaps = array("d")  # arrival - the previous delta's arrival - delay, seconds
        self.dones = 0  # turns completed in the window
        self.bad = 0  # dones with the wrong status or delta count
        self.errors: dict[str, int] = {}

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class WsClient(asyncio.Protocol):
    """A chat.v1 socket, closed loop: message, wait for `done`, next message."""

    DELTA_PREFIX = b'{"type":"delta"'

    def __init__(self, host: str, path: str, rec: Recorder, content: str, expected: int):
        self.rec, self.content, self.expected = rec, content, expected
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {self.key}\r\nSec-WebSocket-Version: 13\r\n"
                        "\r\n").encode()
        self.buf = bytearray()
        self.handshaken = False
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.running = True  # send another message after `done`
        self.n = 0  # deltas of the current reply
        self.first = 0.0  # arrival of its first delta
        self.last = 0.0  # arrival of its latest delta
        self.turn = 0

    # transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc!r}"))
        elif self.running:
            self.rec.error("connection lost")
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buf
        buf += data
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(bytes(buf[:80]).decode(errors="replace")))
                self.transport.close()
                return
            del buf[:end + 4]
            self.handshaken = True
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1] & 0x7F  # server frames are not masked
            head = 2
            if b1 == 126:
                if size - pos < 4:
                    break
                b1 = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif b1 == 127:
                if size - pos < 10:
                    break
                b1 = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if size - pos < head + b1:
                break
            start = pos + head
            pos = start + b1
            if b0 == 0x81:  # a whole text frame
                if buf.startswith(self.DELTA_PREFIX, start):
                    n = self.n
                    if n == 0:
                        self.first = now
                    elif self.rec.measuring:
                        self.rec.lateness.append(now - self.first - n * self.rec.delay_s)
                        self.rec.gaps.append(now - self.last - self.rec.delay_s)
                    self.n = n + 1
                    self.last = now
                else:
                    self.frame(loads(bytes(buf[start:pos])), now)
            elif b0 == 0x89:  # ping: pong with the same payload
                self.send(0xA, bytes(buf[start:pos]))
            elif b0 == 0x88:  # close
                self.transport.close()
            else:
                self.rec.error(f"frame opcode {b0:#x}")
        del buf[:pos]

    def frame(self, f: dict[str, Any], now: float) -> None:
        kind = f.get("type")
        if kind == "done":
            if f.get("status") != "complete" or self.n != self.expected:
                self.rec.bad += 1
            elif self.rec.measuring:
                self.rec.dones += 1
            self.n = 0
            if self.running:
                self.send_message()
        elif kind == "ready":
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == "error":
            self.rec.error(f"error {f.get('code')}")
        # ack, start and anything else: nothing to record

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
        m = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        masked = (int.from_bytes(payload, "big") ^ m).to_bytes(n, "big") if n else b""
        self.transport.write(head + mask + masked)

    def send_message(self) -> None:
        self.turn += 1
        self.send(0x1, dumpb({"type": "message", "content": self.content,
                              "client_id": f"ls-{id(self):x}-{self.turn}"}))

    def close(self) -> None:
        self.running = False
        if self.transport and not self.transport.is_closing():
            self.send(0x8, struct.pack("!H", 1000))
            self.transport.close()


async def play(port: int, pid: int, n: int, words: int, args: argparse.Namespace) -> dict[str, Any]:
    """N sockets, closed loop, --ramp then --duration seconds; the window's figures."""
    loop = asyncio.get_running_loop()
    rec = Recorder(args.delay_ms / 1000)
    rss0 = loadgen.rss_kib(str(pid))
    gate = asyncio.Semaphore(100)
    clients: list[WsClient] = []

    async def open_one(i: int) -> None:
        # distinct words, so that nothing along the way can shorten the reply
        content = f"s{i} " + " ".join(f"w{j}" for j in range(words - 1))
        async with gate:
            _, c = await loop.create_connection(
                lambda: WsClient(f"127.0.0.1:{port}", "/ws", rec, content, args.deltas), "127.0.0.1", port)
            await asyncio.wait_for(c.ready, 30)
        clients.append(c)

    results = await asyncio.gather(*(open_one(i) for i in range(n)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for r in failed[:3]:
        rec.error(f"connect: {type(r).__name__}: {r}"[:100])
    if len(failed) > 3:
        rec.error(f"connect: {len(failed) - 3} more")
    rng = random.Random(n)
    for c in clients:  # the first messages spread over the ramp
        loop.call_later(rng.uniform(0, args.ramp), c.send_message)
    await asyncio.sleep(args.ramp + args.settle)
    rec.measuring = True
    server_pid = str(pid)
    t0, own0, cpu0 = time.perf_counter(), time.process_time(), loadgen.cpu_seconds(server_pid)
    await asyncio.sleep(args.duration)
    t1, own1, cpu1 = time.perf_counter(), time.process_time(), loadgen.cpu_seconds(server_pid)
    rss1 = loadgen.rss_kib(server_pid)
    rec.measuring = False
    for c in clients:
        c.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), 10)
    seconds = t1 - t0
    lat = sorted(rec.lateness)
    gaps = sorted(rec.gaps)
    deltas = len(lat)
    server_cpu = cpu1 - cpu0
    return {
        "n": n, "open": len(clients), "seconds": round(seconds, 2), "deltas": deltas,
        "turns": rec.dones, "bad_turns": rec.bad, "errors": rec.errors,
        "raw_p50_ms": pct(lat, 50), "raw_p99_ms": pct(lat, 99), "raw_max_ms": round(lat[-1] * 1000, 1) if lat else None,
        "gap_p99_ms": pct(gaps, 99), "gap_max_ms": round(gaps[-1] * 1000, 1) if gaps else None,
        "server_cpu_pct": round(server_cpu * 100 / seconds, 1),
        "server_rss_kib": rss1, "server_rss_kib_before": rss0,
        "cpu_us_per_delta": round(server_cpu * 1e6 / deltas, 1) if deltas else None,
        "cpu_pct_per_stream": round(server_cpu * 100 / seconds / n, 3),
        "kib_per_stream": round((rss1 - rss0) / n, 1),
        "loadgen_cpu_pct": round((own1 - own0) * 100 / seconds, 1),
    }


def pct(ordered: Any, p: int) -> float | None:
    if not ordered:
        return None
    rank = max(0, -(-p * len(ordered) // 100) - 1)
    return round(ordered[rank] * 1000, 2)


# -- the servers ----------------------------------------------------------------------------------
@contextlib.contextmanager
def server(kind: str, args: argparse.Namespace, workdir: Path):
    """Start one server on a fresh database; yield (port, pid)."""
    port = runner.free_port()
    db = "postgres" if kind.endswith("-pg") else "sqlite"
    log_path = workdir / f"{kind}-{port}.log"
    with runner.fresh_database(db, workdir, args.pg_url) as (chat_url, plain):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "BENCH_"))}
        if kind.startswith("chat"):
            env.update(runner.CHAT_ENV, CHAT_DATABASE_URL=chat_url, CHAT_ECHO_DELAY_MS=str(args.delay_ms),
                       CHAT_MAX_SOCKETS_PER_USER="1000000", CHAT_MAX_MESSAGE_CHARS="32000")
            argv = [args.chat_server, "--host", "127.0.0.1", "--port", str(port)]
            with runner.running(argv, env, workdir, log_path, port) as proc:
                yield port, proc.pid
            return
        env["BENCH_ECHO_DELAY_MS"] = str(args.delay_ms)
        if kind == "raw-sqlite":
            env.update(BENCH_SQLITE_SYNC="FULL", BENCH_SQLITE_PATH=plain.removeprefix("sqlite:"))
            script = "raw_ws_sqlite.py"
        else:
            env.update(BENCH_ORJSON="1", BENCH_PG_DSN=plain)
            script = "raw_ws_pg.py"
        argv = [args.python, str(Path(args.minimal_dir) / script), "--host", "127.0.0.1", "--port", str(port)]
        with runner.running(argv, env, workdir, log_path, port, timeout=60, ready=runner.listening) as proc:
            time.sleep(0.5)  # the PostgreSQL pool
            yield port, proc.pid


def one_run(kind: str, n: int, args: argparse.Namespace, workdir: Path, duration: float | None = None
            ) -> dict[str, Any]:
    words = args.deltas - (2 if kind.startswith("chat") else 1)  # "You said: " / "echo: " + the words
    a = argparse.Namespace(**{**vars(args), "duration": duration or args.duration})
    with server(kind, args, workdir) as (port, pid):
        if args.loop == "uvloop":
            import uvloop
            return uvloop.run(play(port, pid, n, words, a))
        return asyncio.run(play(port, pid, n, words, a))


def sweep(kind: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    base = one_run(kind, 1, args, workdir, duration=args.idle_duration)
    drift = base["raw_p50_ms"] or 0.0
    rows = [dict(base, server=kind, p50_ms=round(base["raw_p50_ms"] - drift, 2),
                 p99_ms=round(base["raw_p99_ms"] - drift, 2), baseline=True)]
    log(f"[{kind}] N=1: idle drift p50 {drift} ms, p99 {base['raw_p99_ms']} ms")
    for n in args.ns:
        r = one_run(kind, n, args, workdir)
        r.update(server=kind, p50_ms=round(r["raw_p50_ms"] - drift, 2) if r["raw_p50_ms"] is not None else None,
                 p99_ms=round(r["raw_p99_ms"] - drift, 2) if r["raw_p99_ms"] is not None else None)
        rows.append(r)
        failed = (r["p99_ms"] is None or r["p99_ms"] > args.limit_ms or r["open"] < n or r["bad_turns"]
                  or r["errors"])
        log(f"[{kind}] N={n}: p50 {r['p50_ms']} p99 {r['p99_ms']} ms, gap p99 {r['gap_p99_ms']} ms, "
            f"{r['turns']} turns, server CPU {r['server_cpu_pct']} %, RSS {r['server_rss_kib']} KiB, "
            f"{r['cpu_us_per_delta']} µs/delta, "
            f"{r['kib_per_stream']} KiB/stream, loadgen CPU {r['loadgen_cpu_pct']} %"
            + (f", errors {r['errors']} bad {r['bad_turns']}" if r["errors"] or r["bad_turns"] else "")
            + (" -> FAIL" if failed else ""))
        if failed:
            r["failed"] = True
            break
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| server | N | p50 ms | p99 ms | turns | server CPU % | RSS MiB | CPU µs/delta | CPU %/stream "
           "| KiB/stream | load generator CPU % | gap p99 ms |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = f"{r['n']} (idle)" if r.get("baseline") else (f"**{r['n']}** ✗" if r.get("failed") else str(r["n"]))
        out.append(f"| {r['server']} | {n} | {r['p50_ms']} | {r['p99_ms']} | {r['turns']} | {r['server_cpu_pct']} "
                   f"| {r['server_rss_kib'] / 1024:.0f} | {r['cpu_us_per_delta']} | {r['cpu_pct_per_stream']} "
                   f"| {r['kib_per_stream'] if not r.get('baseline') else ''} | {r['loadgen_cpu_pct']} "
                   f"| {r['gap_p99_ms']} |")
    return "\n".join(out)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", default="chat-sqlite", help=f"comma-separated, of {', '.join(SERVERS)}")
    p.add_argument("--ns", default="50,100,200,400,800,1200,1600", help="socket counts, rising")
    p.add_argument("--duration", type=float, default=30.0, help="seconds measured per N")
    p.add_argument("--idle-duration", type=float, default=12.0, help="seconds measured at N=1")
    p.add_argument("--ramp", type=float, default=1.5, help="first messages spread over this many seconds")
    p.add_argument("--settle", type=float, default=1.0, help="seconds after the ramp before measuring")
    p.add_argument("--delay-ms", type=int, default=33)
    p.add_argument("--deltas", type=int, default=DELTAS, help="deltas per reply")
    p.add_argument("--limit-ms", type=float, default=250.0, help="p99 lateness that ends a sweep")
    p.add_argument("--chat-server", default=str(Path(sys.executable).parent / "chat-server"))
    p.add_argument("--python", default=sys.executable, help="interpreter of the minimal servers")
    p.add_argument("--minimal-dir", default="/work/shared/bench")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default=None)
    p.add_argument("--json", help="write every row here")
    a = p.parse_args(argv)
    a.ns = [int(x) for x in a.ns.split(",") if x]
    a.servers = [s for s in a.servers.split(",") if s]
    for s in a.servers:
        if s not in SERVERS:
            p.error(f"unknown server {s!r}")
    if a.loop is None:
        try:
            import uvloop  # noqa: F401
            a.loop = "uvloop"
        except ImportError:
            a.loop = "asyncio"
    del here
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runner.raise_nofile_limit(4 * max(args.ns, default=1) + 1024)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="long-streams-") as tmp:
        for kind in args.servers:
            rows += sweep(kind, args, Path(tmp))
    print(markdown(rows))
    for kind in args.servers:
        mine = [r for r in rows if r["server"] == kind and not r.get("baseline")]
        ok = [r["n"] for r in mine if not r.get("failed")]
        print(f"{kind}: capacity {max(ok) if ok else '< ' + str(args.ns[0])} streams at p99 <= {args.limit_ms:g} ms"
              + ("" if any(r.get("failed") for r in mine) else " (no N failed: raise --ns)"))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "rows": rows},
                                              indent=1))
    bad = any(r["bad_turns"] or (r["errors"] and not r.get("failed")) for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
