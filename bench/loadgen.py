#!/usr/bin/env python3
"""Load generator for the chat.v1 WebSocket server (wire contract: docs/protocol.md).

Load mode: open --sockets connections (each waits for `ready`), then each socket runs --turns
turns in sequence. A turn sends --words distinct words plus a per-turn tag with a unique
client_id and times ack / first delta / done from the send. It fails on an `error` frame, a
timeout, a closed connection, a non-"complete" `done`, or `done.content` != joined deltas.
--pid adds the server's CPU time (/proc/PID/stat) and RSS (VmRSS) over the load phase.

    python bench/loadgen.py --url ws://127.0.0.1:8000/ws --sockets 50 --turns 10 --words 20 \\
        [--pid SERVER_PID] [--json] [--timeout 60]

Idle mode: open N sockets, wait for `ready` on each, hold them ~3 s, report RSS per socket:

    python bench/loadgen.py --idle 2000 --url ws://127.0.0.1:8000/ws --pid SERVER_PID

--json prints one JSON object instead of the summary. Token mode: put ?token=... in the URL.
Exit status 1 if any turn or connection failed. Needs websockets>=14; orjson if importable.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

try:
    import orjson

    def dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode()

    loads = orjson.loads
except ImportError:  # fallback: stdlib json
    import json

    def dumps(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":"))

    loads = json.loads

HANDSHAKE_CONCURRENCY = 200  # simultaneous opening handshakes (avoids SYN backlog drops)
IDLE_HOLD_S = 3.0


class TurnFailed(Exception):
    """A turn (or a connection) did not complete as the protocol promises."""


@dataclass
class Stats:
    ack: list[float] = field(default_factory=list)
    first_delta: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    failures: int = 0
    reasons: Counter = field(default_factory=Counter)

    def fail(self, reason: str, count: int = 1) -> None:
        self.failures += count
        self.reasons[reason] += count


def raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pids: str) -> float:
    """utime + stime of the processes (comma-separated pids), in seconds."""
    return sum(_cpu_seconds(int(pid)) for pid in pids.split(","))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # fields from #3 (state) on
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine, all cores, from /proc/stat: busy is
    everything but idle, iowait and steal; steal is what the hypervisor gave to other guests."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def rss_kib(pids: str) -> int:
    return sum(_rss_kib(int(pid)) for pid in pids.split(","))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def recv_frame(ws: ClientConnection) -> dict[str, Any]:
    frame = loads(await ws.recv())
    if not isinstance(frame, dict):
        raise TurnFailed("non-object frame")
    return frame


async def open_socket(url: str, timeout: float, gate: asyncio.Semaphore, deflate: bool) -> ClientConnection:
    """Connect and wait for `ready`; raise on anything else."""
    async with gate:
        ws = await connect(url, ping_interval=None, max_size=None, compression="deflate" if deflate else None,
                           open_timeout=timeout)
    try:
        frame = await asyncio.wait_for(recv_frame(ws), timeout)
        if frame.get("type") != "ready":
            raise TurnFailed(f"first frame {frame.get('type')!r}, not ready")
        TOKENS[ws] = frame.get("token")
        return ws
    except BaseException:
        await ws.close()
        raise


async def open_all(url: str, n: int, timeout: float, stats: Stats, failed_weight: int,
                   deflate: bool) -> list[ClientConnection]:
    """Open n sockets; each one that fails counts failed_weight failures."""
    gate = asyncio.Semaphore(HANDSHAKE_CONCURRENCY)
    urls = url.split(",")  # several processes: sockets spread over them, round robin
    results = await asyncio.gather(*(open_socket(urls[i % len(urls)], timeout, gate, deflate) for i in range(n)),
                                   return_exceptions=True)
    sockets = []
    for r in results:
        if isinstance(r, BaseException):
            stats.fail(f"connect: {type(r).__name__}: {r}"[:120], failed_weight)
        else:
            sockets.append(r)
    return sockets


TOKENS: dict[ClientConnection, str | None] = {}  # the token each socket's ready handed out


async def follow_all(url: str, sockets: list[ClientConnection], args: argparse.Namespace,
                     stats: Stats) -> list[asyncio.Task[int]]:
    """--followers: a second socket of each user, opened with ?sync=1, which follows every reply
    of the first (another tab); each reader counts the `done` frames it sees."""
    gate = asyncio.Semaphore(HANDSHAKE_CONCURRENCY)

    urls = url.split(",")

    async def one(i: int, ws: ClientConnection) -> ClientConnection:  # on another process, if there are several
        return await open_socket(f"{urls[(i + 1) % len(urls)]}?sync=1&token={TOKENS.get(ws) or ''}",
                                 args.timeout, gate, args.deflate)

    followers = await asyncio.gather(*(one(i, ws) for i, ws in enumerate(sockets)))

    async def read(follower: ClientConnection) -> int:
        dones = 0
        with contextlib.suppress(Exception):
            while True:
                if (await recv_frame(follower)).get("type") == "done":
                    dones += 1
        return dones

    FOLLOWERS.extend(followers)
    return [asyncio.ensure_future(read(f)) for f in followers]


FOLLOWERS: list[ClientConnection] = []


async def close_all(sockets: list[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def one_turn(ws: ClientConnection, content: str, client_id: str) -> tuple[float, ...]:
    """Send one message and read its reply; return (ack, first delta, done) in seconds."""
    t0 = time.perf_counter()
    await ws.send(dumps({"type": "message", "content": content, "client_id": client_id}))
    t_ack = t_first = None
    deltas: list[str] = []
    while True:
        frame = await recv_frame(ws)
        kind, now = frame.get("type"), time.perf_counter() - t0
        if kind == "error":
            raise TurnFailed(f"error {frame.get('code')}")
        if kind == "ack":
            if frame.get("client_id") not in (client_id, None):
                raise TurnFailed("ack for another client_id")
            t_ack = now
        elif kind == "delta":
            t_first = now if t_first is None else t_first
            deltas.append(frame.get("content", ""))
        elif kind == "done":
            if t_ack is None:
                raise TurnFailed("done before ack")
            if frame.get("status") != "complete":
                raise TurnFailed(f"done status {frame.get('status')}")
            if frame.get("content") != "".join(deltas):
                raise TurnFailed("done content != deltas")
            return t_ack, (now if t_first is None else t_first), now
        # `start` and unknown frame types are ignored


async def run_socket(ws: ClientConnection, idx: int, args: argparse.Namespace, run_id: str,
                     stats: Stats) -> None:
    """Run the socket's turns in order; after a timeout or a closed connection the rest fail."""
    words = " ".join(f"w{i}" for i in range(args.words))
    for turn in range(args.turns):
        client_id = f"lg-{run_id}-{idx}-{turn}"
        try:
            ack, first, done = await asyncio.wait_for(
                one_turn(ws, f"t{idx}.{turn} {words}", client_id), args.timeout)
        except TurnFailed as e:
            stats.fail(str(e))
            continue
        except TimeoutError:  # the frame stream is out of step now
            stats.fail("timeout")
            stats.fail("skipped after timeout", args.turns - turn - 1)
            return
        except Exception as e:  # ConnectionClosed, bad JSON, ...
            stats.fail(type(e).__name__, args.turns - turn)
            return
        stats.ack.append(ack)
        stats.first_delta.append(first)
        stats.done.append(done)


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Nearest-rank p50/p90/p99 in milliseconds (None when there are no samples)."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for p in (50, 90, 99):
        rank = max(0, -(-p * len(ordered) // 100) - 1)  # ceil(p% of n) - 1
        out[f"p{p}"] = round(ordered[rank] * 1000, 2) if ordered else None
    return out


async def load_mode(args: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    sockets = await open_all(args.url, args.sockets, args.timeout, stats, args.turns, args.deflate)
    readers = await follow_all(args.url, sockets, args, stats) if args.followers else []
    cpu0 = cpu_seconds(args.pid) if args.pid else None
    rss0 = rss_kib(args.pid) if args.pid else None
    run_id = uuid.uuid4().hex[:8]
    machine0, own0 = machine_cpu(), time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(run_socket(ws, i, args, run_id, stats)
                           for i, ws in enumerate(sockets)))
    seconds = time.perf_counter() - t0
    machine1, own1 = machine_cpu(), time.process_time()
    cpu_s = cpu_seconds(args.pid) - cpu0 if args.pid else None
    rss1 = rss_kib(args.pid) if args.pid else None
    if readers:
        await asyncio.sleep(0.5)  # the followers' last frames
        await close_all(FOLLOWERS)
        missed = sum(args.turns - n for n in await asyncio.gather(*readers))
        if missed:
            stats.fail("follower missed a done", missed)
    await close_all(sockets)
    done = len(stats.done)
    return {
        "sockets": args.sockets, "turns": args.sockets * args.turns, "completed": done,
        "failures": stats.failures, "seconds": round(seconds, 3),
        "turns_per_s": round(done / seconds, 1) if seconds > 0 else None,
        "ack_ms": percentiles(stats.ack), "first_delta_ms": percentiles(stats.first_delta),
        "done_ms": percentiles(stats.done),
        "cpu_s": None if cpu_s is None else round(cpu_s, 3),
        "cpu_ms_per_turn": round(cpu_s * 1000 / done, 3) if cpu_s is not None and done else None,
        "rss_kib_before": rss0, "rss_kib_after": rss1,
        # Where the bound is, on a shared machine: all of its CPU per turn (server, database,
        # this load generator, anything else), this load generator's share, and time stolen by
        # the hypervisor.
        "machine_cpu_ms_per_turn": round((machine1[0] - machine0[0]) * 1000 / done, 3) if done else None,
        "loadgen_cpu_ms_per_turn": round((own1 - own0) * 1000 / done, 3) if done else None,
        "machine_busy_cores": round((machine1[0] - machine0[0]) / seconds, 2) if seconds > 0 else None,
        "steal_s": round(machine1[1] - machine0[1], 3),
        "failure_reasons": dict(stats.reasons.most_common(10)),
    }


async def idle_mode(args: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    rss0 = rss_kib(args.pid) if args.pid else None
    sockets = await open_all(args.url, args.idle, args.timeout, stats, 1, args.deflate)
    await asyncio.sleep(IDLE_HOLD_S)
    rss1 = rss_kib(args.pid) if args.pid else None
    await close_all(sockets)
    per_socket = (rss1 - rss0) / len(sockets) if args.pid and sockets else None
    return {
        "sockets": args.idle, "open": len(sockets), "failures": stats.failures,
        "rss_kib_before": rss0, "rss_kib_after": rss1,
        "rss_kib_per_socket": None if per_socket is None else round(per_socket, 1),
        "failure_reasons": dict(stats.reasons.most_common(10)),
    }


def print_summary(r: dict[str, Any]) -> None:
    if "open" in r:  # idle mode
        print(f"idle sockets: {r['open']}/{r['sockets']} open, failures {r['failures']}")
        if r["rss_kib_before"] is not None:
            print(f"server RSS: {r['rss_kib_before']} -> {r['rss_kib_after']} KiB, "
                  f"{r['rss_kib_per_socket']} KiB per socket")
    else:
        print(f"sockets {r['sockets']}, turns {r['turns']}, completed {r['completed']}, "
              f"failures {r['failures']}")
        print(f"wall {r['seconds']} s, {r['turns_per_s']} turns/s")
        for key in ("ack_ms", "first_delta_ms", "done_ms"):
            p = r[key]
            print(f"  {key:<15} p50 {p['p50']}  p90 {p['p90']}  p99 {p['p99']}")
        if r["cpu_s"] is not None:
            print(f"server CPU: {r['cpu_s']} s, {r['cpu_ms_per_turn']} ms/turn; "
                  f"RSS {r['rss_kib_before']} -> {r['rss_kib_after']} KiB")
        print(f"machine CPU: {r['machine_cpu_ms_per_turn']} ms/turn ({r['machine_busy_cores']} cores busy), "
              f"load generator {r['loadgen_cpu_ms_per_turn']} ms/turn, stolen {r['steal_s']} s")
    for reason, count in r["failure_reasons"].items():
        print(f"  failure x{count}: {reason}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Load generator for the chat.v1 WebSocket server.")
    p.add_argument("--url", default="ws://127.0.0.1:8000/ws",
                   help="the server's /ws; several, comma-separated: sockets are spread over them")
    p.add_argument("--sockets", type=int, default=50)
    p.add_argument("--turns", type=int, default=10, help="turns per socket")
    p.add_argument("--words", type=int, default=20, help="words per message (plus a tag)")
    p.add_argument("--idle", type=int, metavar="N", help="idle mode: hold N sockets")
    p.add_argument("--pid", help="server process id(s), comma-separated, for CPU and RSS (summed)")
    p.add_argument("--deflate", action="store_true",
                   help="offer permessage-deflate, as browsers do (default: off, as the ceiling runs)")
    p.add_argument("--followers", action="store_true",
                   help="each socket has a second socket of its user (?sync=1) following every reply")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per turn / connect")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()
    result = asyncio.run(idle_mode(args) if args.idle else load_mode(args))
    if args.json:
        print(dumps(result))
    else:
        print_summary(result)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
