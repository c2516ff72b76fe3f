#!/usr/bin/env python3
"""Benchmark runner: chat-server against the hand-written ceiling (bench/ceiling.py), side by side.

Each measurement starts the server fresh on a fresh database (SQLite: a file in a temporary
directory; PostgreSQL: CREATE DATABASE bench_<random>, dropped afterwards), runs bench/loadgen.py
with --json --pid, and stops the server. Servers alternate, chat-server then ceiling, A B A B, for
--rounds rounds. The table gives the median and range (min-max) of each figure per server and
database, the ratios chat-server/ceiling, and PASS/FAIL against the targets:

  turns/s >= 0.8 x the ceiling's;  done p99 <= 1.5 x the ceiling's;
  idle sockets: RSS per socket <= 1.25 x the ceiling's.

    .venv/bin/python bench/run.py                           # SQLite, 3 rounds, 50 sockets x 40 turns
    .venv/bin/python bench/run.py --db both --sweep 10,50,200 --idle 10000 --markdown results.md
    .venv/bin/python bench/run.py --idle 2000 --no-load     # idle sockets only
    .venv/bin/python bench/run.py --quick                   # CI smoke: everything runs, exit 0
    .venv/bin/python bench/run.py --db postgres --processes 2   # two chat-server processes, one database
    .venv/bin/python bench/run.py --db both --baseline /tmp/old/.venv/bin/chat-server   # A/B two builds
    .venv/bin/python bench/run.py --baseline .venv/bin/chat-server --followers          # a follower's cost

--sweep N,N,... measures turns/s and done p99 per socket count and plots them (matplotlib) to
--plot (default docs/benchmarks-sweep.png). Exit status 1 when a server did not start, a run
broke, or a turn failed; missed targets only with --strict.
Run it with the project's virtualenv Python (it needs asyncpg for PostgreSQL, matplotlib for --sweep).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
LOADGEN = ROOT / "bench" / "loadgen.py"
CEILING = ROOT / "bench" / "ceiling.py"
SERVERS = ("chat-server", "ceiling")
DB_LABEL = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
TARGET_TURNS = 0.8  # chat-server turns/s >= 0.8 x ceiling
TARGET_P99 = 1.5  # chat-server done p99 <= 1.5 x ceiling
TARGET_RSS = 1.25  # chat-server RSS per idle socket <= 1.25 x ceiling
CHAT_ENV = {  # the benchmark settings: echo without a pause, no abuse limits in the way
    "CHAT_LLM": "echo",
    "CHAT_ECHO_DELAY_MS": "0",
    "CHAT_RATE_LIMIT_PER_MINUTE": "1000000",
    "CHAT_MAX_FRAMES_PER_SECOND": "100000",
    "CHAT_OPEN_MODE_USERS_PER_MINUTE": "0",  # every benchmark socket is a new user from 127.0.0.1
    "CHAT_HTTP_REQUESTS_PER_MINUTE": "0",
    "CHAT_HTTP_REQUESTS_PER_MINUTE_PER_ADDRESS": "0",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------------------------------
def raise_nofile_limit(needed: int) -> int:
    """Raise this process's open-file limit (children inherit it); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, needed)
    if want > hard:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def healthy(port: int) -> bool:
    """GET /healthz answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def listening(port: int) -> bool:
    """Something accepts connections on the port (a server with no /healthz)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str], cwd: Path, log_path: Path, port: int,
            timeout: float = 90.0, ready: Callable[[int], bool] = healthy) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait until `ready(port)` (by default GET /healthz answers 200), and stop
    it (SIGTERM) afterwards."""
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not ready(port):
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {proc.returncode}:\n{tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} not ready after {timeout:g} s:\n{tail(log_path)}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- databases ----------------------------------------------------------------------------------
async def pg_admin(admin_url: str, sql: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        return str(await conn.fetchval(sql) if sql.startswith(("SELECT", "SHOW")) else await conn.execute(sql))
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_database(kind: str, workdir: Path, admin_url: str) -> Iterator[tuple[str, str]]:
    """A new empty database: (chat-server's CHAT_DATABASE_URL, the ceiling's --db)."""
    if kind == "sqlite":
        path = workdir / f"bench-{secrets.token_hex(4)}.db"
        yield f"sqlite+aiosqlite:///{path}", f"sqlite:{path}"
        return
    name = f"bench_{secrets.token_hex(6)}"
    asyncio.run(pg_admin(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        parts = urlsplit(admin_url)
        plain = parts._replace(path=f"/{name}").geturl()
        yield plain.replace("postgresql://", "postgresql+asyncpg://", 1), plain
    finally:
        try:
            asyncio.run(pg_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except Exception as e:  # a leftover bench_ database is harmless
            log(f"  could not drop database {name}: {e!r}")


# -- one measurement ----------------------------------------------------------------------------
def server_command(args: argparse.Namespace, server: str, port: int, db_urls: tuple[str, str],
                   ) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}  # no stray settings
    if server == "chat-server" or args.baseline:
        env.update(CHAT_ENV, CHAT_DATABASE_URL=db_urls[0])
        env.update(kv.split("=", 1) for kv in args.server_env)
        binary = args.chat_server if server == "chat-server" else os.path.abspath(args.baseline)
        return [binary, "--host", "127.0.0.1", "--port", str(port)], env
    return [sys.executable, str(CEILING), "--db", db_urls[1], "--port", str(port)], env


def loadgen(args: argparse.Namespace, ports: list[int], pids: list[int], mode: list[str]) -> dict[str, Any]:
    urls = ",".join(f"ws://127.0.0.1:{port}/ws" for port in ports)  # sockets spread over the processes
    argv = [sys.executable, str(LOADGEN), "--url", urls, "--pid", ",".join(map(str, pids)),
            "--json", "--timeout", str(args.timeout), *mode]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout * max(args.turns, 1) + 300)
    if out.returncode not in (0, 1) or not out.stdout.strip():
        raise RuntimeError(f"loadgen exited with {out.returncode}: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, workdir: Path, server: str, db: str, mode: list[str]) -> dict[str, Any]:
    """Fresh database, fresh server(s), one loadgen run; the loadgen's JSON (or an "error").
    chat-server with --processes N: N processes on one database, the sockets spread over them."""
    count = args.processes if server == "chat-server" else 1
    ports = [free_port() for _ in range(count)]
    log_paths = [Path(args.logs or workdir) / f"{server}-{db}-{port}.log" for port in ports]
    try:
        with fresh_database(db, workdir, args.pg_url) as urls, contextlib.ExitStack() as stack:
            procs = []
            for port, log_path in zip(ports, log_paths, strict=True):
                argv, env = server_command(args, server, port, urls)
                procs.append(stack.enter_context(running(argv, env, workdir, log_path, port)))
            result = loadgen(args, ports, [p.pid for p in procs], mode)
            for proc, log_path in zip(procs, log_paths, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"{server} died during the run:\n{tail(log_path)}")
    except Exception as e:
        log(f"  {server} on {db}: {e}")
        return {"error": str(e)[:2000]}
    if result.get("failures"):
        log(f"  {server} on {db}: {result['failures']} failures {result.get('failure_reasons')}; "
            f"server log tail:\n{tail(log_paths[0], 5)}")
    return result


def load_mode(sockets: int, args: argparse.Namespace) -> list[str]:
    return ["--sockets", str(sockets), "--turns", str(args.turns), "--words", str(args.words)]


def series(args: argparse.Namespace, workdir: Path, db: str, sockets: int, label: str) -> list[dict[str, Any]]:
    """--rounds rounds of A B (chat-server, ceiling) at one socket count."""
    runs = []
    for rnd in range(1, args.rounds + 1):
        for server in SERVERS:
            extra = ["--followers"] if args.followers and server == "chat-server" else []
            r = measure(args, workdir, server, db, load_mode(sockets, args) + extra)
            r.update(server=server, db=db, sockets=sockets, round=rnd)
            runs.append(r)
            if "error" not in r:
                log(f"[{label} {DB_LABEL[db]} {sockets} sockets, round {rnd}/{args.rounds}] {server:<11} "
                    f"{r['turns_per_s']} turns/s, done p99 {r['done_ms']['p99']} ms, "
                    f"CPU {r['cpu_ms_per_turn']} ms/turn, failures {r['failures']}")
    return runs


def idle_series(args: argparse.Namespace, workdir: Path, db: str) -> list[dict[str, Any]]:
    runs = []
    for rnd in range(1, args.idle_rounds + 1):
        for server in SERVERS:
            r = measure(args, workdir, server, db, ["--idle", str(args.idle)])
            r.update(server=server, db=db, round=rnd)
            runs.append(r)
            if "error" not in r:
                log(f"[idle {args.idle}, round {rnd}/{args.idle_rounds}] {server:<11} {r['open']} open, "
                    f"RSS {r['rss_kib_before']} -> {r['rss_kib_after']} KiB, "
                    f"{r['rss_kib_per_socket']} KiB/socket, failures {r['failures']}")
    return runs


# -- summaries ----------------------------------------------------------------------------------
METRICS = {  # name: how to read it from a loadgen result
    "turns_per_s": lambda r: r["turns_per_s"],
    "done_p99": lambda r: r["done_ms"]["p99"],
    "ack_p99": lambda r: r["ack_ms"]["p99"],
    "cpu_ms_per_turn": lambda r: r["cpu_ms_per_turn"],
    "rss_kib_per_socket": lambda r: r["rss_kib_per_socket"],
}


def stat(runs: list[dict[str, Any]], metric: str) -> dict[str, float] | None:
    values = []
    for r in runs:
        with contextlib.suppress(KeyError, TypeError):
            v = METRICS[metric](r)
            if v is not None:
                values.append(float(v))
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(runs: list[dict[str, Any]], metrics: tuple[str, ...]) -> dict[str, Any]:
    """Per server: each metric's median/min/max, failures, broken runs."""
    out: dict[str, Any] = {}
    for server in SERVERS:
        mine = [r for r in runs if r["server"] == server]
        ok = [r for r in mine if "error" not in r]
        out[server] = {m: stat(ok, m) for m in metrics}
        out[server]["failures"] = sum(r.get("failures", 0) for r in ok)
        out[server]["errors"] = len(mine) - len(ok)
    return out


def ratio(summary: dict[str, Any], metric: str) -> float | None:
    a, b = summary["chat-server"].get(metric), summary["ceiling"].get(metric)
    if not a or not b or not b["median"]:
        return None
    return a["median"] / b["median"]


def verdict(value: float | None, target: float, at_least: bool) -> str:
    if value is None:
        return "n/a"
    return "PASS" if (value >= target if at_least else value <= target) else "FAIL"


def fmt(s: dict[str, float] | None, digits: int = 1) -> str:
    if s is None:
        return "n/a"
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def load_checks(summary: dict[str, Any]) -> list[tuple[str, float | None, str, str]]:
    turns, p99 = ratio(summary, "turns_per_s"), ratio(summary, "done_p99")
    return [("turns/s", turns, f">= {TARGET_TURNS}", verdict(turns, TARGET_TURNS, True)),
            ("done p99", p99, f"<= {TARGET_P99}", verdict(p99, TARGET_P99, False))]


def idle_check(summary: dict[str, Any]) -> tuple[str, float | None, str, str]:
    rss = ratio(summary, "rss_kib_per_socket")
    return ("RSS/socket", rss, f"<= {TARGET_RSS}", verdict(rss, TARGET_RSS, False))


def ratio_text(check: tuple[str, float | None, str, str]) -> str:
    name, value, target, result = check
    return f"{name} ratio {'n/a' if value is None else f'{value:.2f}'} (target {target}): {result}"


def print_load(db: str, summary: dict[str, Any], args: argparse.Namespace, sockets: int) -> None:
    processes = f", chat-server as {args.processes} processes (CPU summed)" if args.processes > 1 else ""
    print(f"\n{DB_LABEL[db]}: {sockets} sockets x {args.turns} turns, {args.words} words, "
          f"{args.rounds} round(s){processes}; median (min–max)")
    print(f"{'server':<12} {'turns/s':<24} {'done p99 ms':<24} {'ack p99 ms':<24} {'CPU ms/turn':<20} failures")
    for server in SERVERS:
        s = summary[server]
        broken = f" ({s['errors']} broken runs)" if s["errors"] else ""
        print(f"{server:<12} {fmt(s['turns_per_s']):<24} {fmt(s['done_p99']):<24} {fmt(s['ack_p99']):<24} "
              f"{fmt(s['cpu_ms_per_turn'], 2):<20} {s['failures']}{broken}")
    for check in load_checks(summary):
        print("  " + ratio_text(check) + (" (--quick: not judged)" if args.quick else ""))


def print_idle(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nIdle: {args.idle} sockets held ~3 s, {args.idle_rounds} round(s); RSS growth per socket")
    for server in SERVERS:
        s = summary[server]
        print(f"{server:<12} {fmt(s['rss_kib_per_socket'])} KiB/socket, failures {s['failures']}"
              + (f" ({s['errors']} broken runs)" if s["errors"] else ""))
    print("  " + ratio_text(idle_check(summary)) + (" (--quick: not judged)" if args.quick else ""))


# -- the plot and the markdown ------------------------------------------------------------------
def plot_sweep(sweep: dict[str, dict[int, dict[str, Any]]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors, styles = {"chat-server": "tab:blue", "ceiling": "tab:orange"}, {"sqlite": "-", "postgres": "--"}
    for db, by_n in sweep.items():
        counts = sorted(by_n)
        for server in SERVERS:
            for ax, metric in ((ax_t, "turns_per_s"), (ax_p, "done_p99")):
                stats_ = [by_n[n][server][metric] for n in counts]
                xs = [n for n, s in zip(counts, stats_, strict=True) if s]
                med = [s["median"] for s in stats_ if s]
                err = [[s["median"] - s["min"] for s in stats_ if s], [s["max"] - s["median"] for s in stats_ if s]]
                ax.errorbar(xs, med, yerr=err, label=f"{server} ({DB_LABEL[db]})", color=colors[server],
                            linestyle=styles[db], marker="o", capsize=3)
    all_counts = sorted({n for by_n in sweep.values() for n in by_n})
    for ax, title in ((ax_t, "turns/s (higher is better)"), (ax_p, "done p99, ms (lower is better)")):
        ax.set_xscale("log")
        ax.set_xticks(all_counts, [str(n) for n in all_counts])
        ax.minorticks_off()
        ax.set_xlabel("sockets")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.suptitle(f"chat-server vs ceiling: {args.turns} turns/socket, {args.words} words, "
                 f"median and range of {args.rounds} round(s), {datetime.now(UTC):%Y-%m-%d}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine(args: argparse.Namespace, dbs: list[str]) -> dict[str, str]:
    import sqlite3

    import websockets

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:", 1)[1].split()[0])
        mem = f", {kib / 1048576:.1f} GiB RAM"
    info = {
        "machine": f"{cpu}, {os.cpu_count()} CPUs{mem}; {platform.system()} {platform.release()}",
        "software": f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
                    f"websockets {websockets.__version__}",
        "load": "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + " at the start",
    }
    if "postgres" in dbs:
        with contextlib.suppress(Exception):
            info["software"] += ", PostgreSQL " + asyncio.run(pg_admin(args.pg_url, "SHOW server_version"))
    return info


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    info = results["machine"]
    lines = [
        f"- command: `{results['command']}`",
        f"- date: {results['date']}",
        f"- machine: {info['machine']} ({info['load']})",
        f"- software: {info['software']}",
        f"- each figure: median (min–max) over {args.rounds} round(s); servers alternate A B A B, each run on a "
        "fresh server and a fresh database; load generator on the same machine",
        "- server CPU ms/turn: the server process's user+system time over the load phase per completed turn "
        "(PostgreSQL's own processes are not counted)",
        "",
    ]
    if results["load"]:
        lines += [f"Load: {args.sockets} sockets × {args.turns} turns, {args.words}-word messages, echo without "
                  "delay.", "",
                  "| database | server | turns/s | done p99 ms | ack p99 ms | server CPU ms/turn | failures |",
                  "|---|---|---|---|---|---|---|"]
        for db, summary in results["load"].items():
            for server in SERVERS:
                s = summary[server]
                lines.append(f"| {DB_LABEL[db]} | {server} | {fmt(s['turns_per_s'])} | {fmt(s['done_p99'])} | "
                             f"{fmt(s['ack_p99'])} | {fmt(s['cpu_ms_per_turn'], 2)} | {s['failures']} |")
        lines += ["", "| database | ratio chat-server / ceiling | value | target | result |", "|---|---|---|---|---|"]
        for db, summary in results["load"].items():
            for name, value, target, result in load_checks(summary):
                shown = "n/a" if value is None else f"{value:.2f}"
                lines.append(f"| {DB_LABEL[db]} | {name} | {shown} | {target} | {result} |")
        lines.append("")
    if results["sweep"]:
        lines += [f"Sweep: {args.turns} turns per socket; turns/s and done p99 ms per socket count.", "",
                  "| database | sockets | chat-server turns/s | ceiling turns/s | chat-server p99 ms | "
                  "ceiling p99 ms |", "|---|---|---|---|---|---|"]
        for db, by_n in results["sweep"].items():
            for n, s in sorted(by_n.items()):
                lines.append(f"| {DB_LABEL[db]} | {n} | {fmt(s['chat-server']['turns_per_s'])} | "
                             f"{fmt(s['ceiling']['turns_per_s'])} | {fmt(s['chat-server']['done_p99'])} | "
                             f"{fmt(s['ceiling']['done_p99'])} |")
        if results.get("plot"):
            lines += ["", f"![turns/s and done p99 against sockets]({results['plot']})"]
        lines.append("")
    if results["idle"]:
        s = results["idle"]
        name, value, target, result = idle_check(s)
        lines += [f"Idle: {args.idle} sockets held by one process (RSS growth per socket, KiB).", "",
                  "| chat-server | ceiling | ratio | target | result |", "|---|---|---|---|---|",
                  f"| {fmt(s['chat-server']['rss_kib_per_socket'])} | {fmt(s['ceiling']['rss_kib_per_socket'])} | "
                  f"{'n/a' if value is None else f'{value:.2f}'} | {target} | {result} |", ""]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="chat-server against the hand-written ceiling, A B A B.")
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="sqlite")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sockets", type=int, default=50)
    p.add_argument("--turns", type=int, default=40, help="turns per socket")
    p.add_argument("--words", type=int, default=20, help="words per message")
    p.add_argument("--sweep", help="socket counts, e.g. 10,50,200: turns/s and p99 per count, plotted")
    p.add_argument("--plot", default=str(ROOT / "docs" / "benchmarks-sweep.png"), help="where --sweep's PNG goes")
    p.add_argument("--idle", type=int, metavar="N", help="also measure RSS per idle socket with N sockets")
    p.add_argument("--idle-rounds", type=int, default=1, help="rounds of the idle measurement (default 1)")
    p.add_argument("--no-load", action="store_true", help="skip the main load comparison")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke: 1 round, 5 sockets x 3 turns, SQLite, 20 idle sockets; targets not judged")
    p.add_argument("--markdown", metavar="FILE", help="write the results as a markdown fragment")
    p.add_argument("--json", metavar="FILE", help="write every run's raw result and the summaries")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
                   help="an admin connection: the runner creates and drops bench_* databases through it")
    p.add_argument("--chat-server", default=str(Path(sys.executable).parent / "chat-server"),
                   help="the chat-server executable (default: beside this Python)")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra environment variable for chat-server (repeatable)")
    p.add_argument("--logs", metavar="DIR", help="keep the servers' logs here (default: a temporary directory)")
    p.add_argument("--timeout", type=float, default=60.0, help="loadgen's seconds per turn / connect")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="run N chat-server processes on one PostgreSQL database (ports of 127.0.0.1), "
                        "the sockets spread over them; CPU is their sum (docs/multi-process.md)")
    p.add_argument("--baseline", metavar="CHAT_SERVER",
                   help="A/B two builds: this chat-server (e.g. an older commit's venv) runs in the ceiling's "
                        "place, with the same settings; the 'ceiling' column is then that build")
    p.add_argument("--followers", action="store_true",
                   help="chat-server's sockets each get a second socket of their user (?sync=1) that "
                        "follows every reply (with --baseline pointing at the same build: the cost of a follower)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.sockets, args.turns, args.db = 1, 5, 3, "sqlite"
        args.idle = args.idle or 20
    if args.processes > 1 and args.db != "postgres":
        p.error("--processes N needs --db postgres: SQLite serves one process")
    if any("=" not in kv for kv in args.server_env):
        p.error("--server-env takes KEY=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    counts = [int(n) for n in args.sweep.split(",")] if args.sweep else []
    needed = max([args.sockets, args.idle or 0, *counts]) + 1024
    limit = raise_nofile_limit(needed)
    if limit < needed:
        log(f"warning: open-file limit {limit} < {needed} needed; sockets may fail to open")
    if not Path(args.chat_server).exists():
        log(f"no chat-server at {args.chat_server} (install the project: pip install -e .)")
        return 1
    results: dict[str, Any] = {
        "command": shlex.join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(args, dbs),
        "load": {}, "sweep": {}, "idle": None, "runs": [],
    }
    if args.logs:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp:
        workdir = Path(tmp)
        if not args.no_load:
            for db in dbs:
                runs = series(args, workdir, db, args.sockets, "load")
                results["runs"] += runs
                results["load"][db] = summarize(runs, ("turns_per_s", "done_p99", "ack_p99", "cpu_ms_per_turn"))
        for db in dbs if counts else []:
            results["sweep"][db] = {}
            for n in counts:
                runs = series(args, workdir, db, n, "sweep")
                results["runs"] += runs
                results["sweep"][db][n] = summarize(runs, ("turns_per_s", "done_p99"))
        if args.idle:
            runs = idle_series(args, workdir, dbs[0])
            results["runs"] += runs
            results["idle"] = summarize(runs, ("rss_kib_per_socket",))
    if results["sweep"]:
        plot_path = Path(args.plot)
        plot_sweep(results["sweep"], args, plot_path)
        results["plot"] = os.path.relpath(plot_path.resolve(), Path(args.markdown).resolve().parent
                                          if args.markdown else Path.cwd())
        log(f"plot written to {plot_path}")

    print(f"\n{results['date']} · {results['machine']['machine']} · {results['machine']['load']}")
    for db, summary in results["load"].items():
        print_load(db, summary, args, args.sockets)
    for db, by_n in results["sweep"].items():
        print(f"\nSweep, {DB_LABEL[db]} ({args.turns} turns/socket): median turns/s | done p99 ms")
        for n, s in sorted(by_n.items()):
            print(f"  {n:>5} sockets  chat-server {fmt(s['chat-server']['turns_per_s'])} | "
                  f"{fmt(s['chat-server']['done_p99'])}   ceiling {fmt(s['ceiling']['turns_per_s'])} | "
                  f"{fmt(s['ceiling']['done_p99'])}")
    if results["idle"]:
        print_idle(results["idle"], args)

    if args.markdown:
        Path(args.markdown).write_text(markdown(results, args) + "\n")
        log(f"markdown written to {args.markdown}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    broken = sum("error" in r for r in results["runs"])
    failures = sum(r.get("failures", 0) for r in results["runs"])
    if broken or failures:
        print(f"\n{broken} broken runs, {failures} failed turns/connections: exit 1")
        return 1
    if args.strict and not args.quick:
        checks = [c for s in results["load"].values() for c in load_checks(s)]
        checks += [idle_check(results["idle"])] if results["idle"] else []
        if any(c[3] == "FAIL" for c in checks):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
