#!/usr/bin/env python3
"""Many processes on one PostgreSQL (docs/multi-process.md): what the LISTEN/NOTIFY seam costs.

Load: turns/s and server CPU per turn (summed over the processes) for each configuration, runs
interleaved, median of --rounds, each on a fresh database and fresh processes:

    .venv/bin/python bench/multi.py --configs 1:off,1:on,2:on --rounds 3

`P:on|off` = P processes with CHAT_PG_NOTIFY on or off (off with P > 1 is not one server).

Latency (--latency N): a reply generated on process 1 and followed (resume) from process 2; for
each delta, the time between its arrival on the generating process's socket and on the
follower's, p50 / p99 over N turns of --words words, echo pausing --delay-ms between deltas.
With --under-load, --sockets sockets play turns over both processes meanwhile, and PostgreSQL's
pg_notification_queue_usage() and ungranted locks are sampled every 0.2 s:

    .venv/bin/python bench/multi.py --no-load --latency 20 --words 30 --delay-ms 20 --under-load
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (bench/run.py: servers, databases, loadgen)


def load(args: argparse.Namespace, workdir: Path) -> None:
    configs = [(int(c.split(":")[0]), c.split(":")[1]) for c in args.configs.split(",")]
    results: dict[str, list[dict]] = {c: [] for c in args.configs.split(",")}
    for rnd in range(args.rounds):
        for (processes, notify), label in zip(configs, results, strict=True):
            ns = argparse.Namespace(**vars(args))
            ns.processes = processes
            ns.server_env = [f"CHAT_PG_NOTIFY={'true' if notify == 'on' else 'false'}"]
            r = bench.measure(ns, workdir, "chat-server", "postgres", bench.load_mode(args.sockets, ns))
            results[label].append(r)
            if "error" not in r:
                bench.log(f"[round {rnd + 1}] {label}: {r['turns_per_s']} turns/s, done p99 {r['done_ms']['p99']} ms, "
                          f"CPU {r['cpu_ms_per_turn']} ms/turn, failures {r['failures']}")
    print(f"\n{args.sockets} sockets x {args.turns} turns, {args.words} words, median of {args.rounds} "
          "(min-max)")
    print("| processes:notify | turns/s | done p99 ms | server CPU ms/turn |")
    print("|---|---|---|---|")
    for label, runs in results.items():
        ok = [r for r in runs if "error" not in r]

        def col(key, runs=ok):  # type: ignore[no-untyped-def]
            values = [bench.METRICS[key](r) for r in runs]
            d = 3 if key == "cpu_ms_per_turn" else 1
            return f"{statistics.median(values):.{d}f} ({min(values):.{d}f}-{max(values):.{d}f})" if values else "-"

        print(f"| {label} | {col('turns_per_s')} | {col('done_p99')} | {col('cpu_ms_per_turn')} |")


async def sample_postgres(db_url: str, stop: asyncio.Event) -> dict[str, float]:
    """pg_notification_queue_usage() and ungranted locks, every 0.2 s until `stop`."""
    import asyncpg

    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    usage: list[float] = []
    waits: list[int] = []
    try:
        while not stop.is_set():
            usage.append(await conn.fetchval("SELECT pg_notification_queue_usage()"))
            waits.append(await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    finally:
        await conn.close()
    return {"samples": len(usage), "queue_usage_max": max(usage, default=0.0),
            "lock_waits_max": max(waits, default=0), "lock_waits_mean": statistics.fmean(waits) if waits else 0.0}


async def latency(args: argparse.Namespace, ports: list[int]) -> None:
    from websockets.asyncio.client import connect

    a = await connect(f"ws://127.0.0.1:{ports[0]}/ws", max_size=None)
    ready = json.loads(await a.recv())
    b = await connect(f"ws://127.0.0.1:{ports[1]}/ws?token={ready['token']}", max_size=None)
    await b.recv()
    gaps: list[float] = []
    for i in range(args.latency):
        await a.send(json.dumps({"type": "message", "content": " ".join(f"w{i}-{j}" for j in range(args.words))}))
        seen_a: dict[int, float] = {}
        seen_b: dict[int, float] = {}
        followed = False
        done_a = done_b = False
        while not (done_a and done_b):
            recv_a = asyncio.ensure_future(a.recv()) if not done_a else None
            recv_b = asyncio.ensure_future(b.recv()) if followed and not done_b else None
            waiting = {t for t in (recv_a, recv_b) if t is not None}
            finished, pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            now = time.perf_counter()
            for t in pending:
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
            for t in finished:
                f = json.loads(t.result())
                side = seen_a if t is recv_a else seen_b
                if f["type"] == "start" and t is recv_a:
                    await b.send(json.dumps({"type": "resume", "message_id": f["message_id"]}))
                    followed = True
                elif f["type"] == "delta":
                    side[f["seq"]] = now
                elif f["type"] == "done":
                    if t is recv_a:
                        done_a = True
                    else:
                        done_b = True
        gaps += [(seen_b[s] - seen_a[s]) * 1000 for s in seen_b if s in seen_a and seen_b[s] >= seen_a[s]
                 and s > 1]  # from seq 2: the first ones are the catch-up after the resume
    await a.close()
    await b.close()
    gaps.sort()
    p = lambda q: gaps[min(len(gaps) - 1, int(q * len(gaps)))]  # noqa: E731
    print(f"cross-process delta latency over {len(gaps)} deltas: p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, "
          f"max {gaps[-1]:.1f} ms (echo {args.delay_ms} ms between deltas)")


def latency_run(args: argparse.Namespace, workdir: Path) -> None:
    ports = [bench.free_port(), bench.free_port()]
    with bench.fresh_database("postgres", workdir, args.pg_url) as urls, contextlib.ExitStack() as stack:
        for port in ports:
            ns = argparse.Namespace(**vars(args))
            ns.server_env = [f"CHAT_ECHO_DELAY_MS={args.delay_ms}"]
            argv, env = bench.server_command(ns, "chat-server", port, urls)
            stack.enter_context(bench.running(argv, env, workdir, workdir / f"lat-{port}.log", port))
        load = None
        if args.under_load:  # the load runs until the latency turns are done, then is stopped
            load = subprocess.Popen(
                [sys.executable, str(bench.LOADGEN), "--url", ",".join(f"ws://127.0.0.1:{p}/ws" for p in ports),
                 "--sockets", str(args.sockets), "--turns", "100000", "--words", str(args.words),
                 "--timeout", str(args.timeout)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2)  # the sockets are open and playing
        try:
            asyncio.run(measure_latency(args, ports, urls[0]))
        finally:
            if load is not None:
                load.terminate()
                load.wait(10)


async def measure_latency(args: argparse.Namespace, ports: list[int], db_url: str) -> None:
    stop = asyncio.Event()
    sampling = asyncio.ensure_future(sample_postgres(db_url, stop))
    try:
        await latency(args, ports)
    finally:
        stop.set()
        pg = await sampling
    print(f"{'under load of ' + str(args.sockets) + ' sockets' if args.under_load else 'idle'}: "
          f"pg_notification_queue_usage max {pg['queue_usage_max']:.6f}, ungranted locks max "
          f"{pg['lock_waits_max']} (mean {pg['lock_waits_mean']:.2f}) over {pg['samples']} samples")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="1:off,1:on,2:on")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sockets", type=int, default=50)
    p.add_argument("--turns", type=int, default=40)
    p.add_argument("--words", type=int, default=20)
    p.add_argument("--latency", type=int, default=0, metavar="N", help="measure delta latency over N turns")
    p.add_argument("--delay-ms", type=int, default=20)
    p.add_argument("--no-load", action="store_true")
    p.add_argument("--under-load", action="store_true",
                   help="with --latency: --sockets sockets play turns over both processes meanwhile")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--chat-server", default=str(Path(sys.executable).parent / "chat-server"))
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--logs", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="chat-multi-") as tmp:
        if not args.no_load:
            load(args, Path(tmp))
        if args.latency:
            latency_run(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
