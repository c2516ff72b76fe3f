"""The load generator runs against a real server (a smoke run so bench/ cannot rot; no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

from support.servers import PG_ADMIN_URL

LOADGEN = Path(__file__).resolve().parents[2] / "bench" / "loadgen.py"


def run_loadgen(*args: str) -> dict:
    out = subprocess.run([sys.executable, str(LOADGEN), "--json", *args], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_load_mode_completes_every_turn(server):
    # 100 turns: enough machine CPU to span a few of /proc/stat's 10 ms ticks (15 turns could
    # fall inside one, and read as 0).
    result = run_loadgen("--url", server.ws_url, "--sockets", "5", "--turns", "20", "--words", "8",
                         "--pid", str(server.pid))
    assert result["failures"] == 0 and result["turns"] == 100, result
    assert result["turns_per_s"] > 0 and result["cpu_ms_per_turn"] is not None
    assert result["machine_cpu_ms_per_turn"] > 0 and result["loadgen_cpu_ms_per_turn"] > 0, result


def test_idle_mode_reports_rss_per_socket(server):
    result = run_loadgen("--idle", "20", "--url", server.ws_url, "--pid", str(server.pid))
    assert result["failures"] == 0 and result["open"] == 20, result
    assert result["rss_kib_per_socket"] is not None


def test_runner_quick_mode_runs_chat_server_and_the_ceiling():
    out = subprocess.run([sys.executable, str(LOADGEN.parent / "run.py"), "--quick"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ceiling" in out.stdout and "chat-server" in out.stdout, out.stdout[-2000:]


def test_pg_turn_cost_measures_both_variants(pg):
    out = subprocess.run([sys.executable, str(LOADGEN.parent / "pg_turn_cost.py"), "--turns", "20", "--rounds", "1",
                          "--dsn", PG_ADMIN_URL], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "chat-server: PostgreSQL CPU" in out.stdout and "minimal: PostgreSQL CPU" in out.stdout, out.stdout


def test_search_bench_tiny_sqlite(tmp_path):
    out_path = tmp_path / "search.json"
    out = subprocess.run([sys.executable, str(LOADGEN.parent / "search.py"), "--db", "sqlite", "--users", "3",
                          "--messages-per-user", "20", "--queries", "5", "--warmup", "2", "--json", str(out_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out_path.read_text())["results"]["sqlite"]
    assert result["problem_count"] == 0 and result["fill"]["messages"] == 60, result
    assert result["sizes"]["messages"] == 60 and result["sizes"]["index_bytes"] > 0, result["sizes"]
    for name, c in result["classes"].items():
        assert c["queries"] == 5 and c["p50_ms"] > 0 and c["max_ms"] >= c["p99_ms"] >= c["p50_ms"], (name, c)


def test_long_streams_tiny_sqlite(tmp_path):
    out_path = tmp_path / "long.json"
    out = subprocess.run([sys.executable, str(LOADGEN.parent / "long_streams.py"), "--servers", "chat-sqlite",
                          "--ns", "3", "--duration", "1.5", "--idle-duration", "1", "--deltas", "10",
                          "--delay-ms", "10", "--ramp", "0.2", "--settle", "0.2", "--json", str(out_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads(out_path.read_text())["rows"]
    assert [r["n"] for r in rows] == [1, 3], rows
    for r in rows:
        assert r["open"] == r["n"] and not r["errors"] and r["bad_turns"] == 0, r
        assert r["turns"] > 0 and r["deltas"] > 0 and r["p99_ms"] is not None, r
        assert r["server_cpu_pct"] >= 0 and r["server_rss_kib"] > 0, r
    assert "capacity" in out.stdout, out.stdout
