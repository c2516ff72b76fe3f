#!/usr/bin/env bash
# chat-server (one process) against a minimal hand-written server (one INSERT per commit point, no
# framework; not shipped here) on PostgreSQL (DB=postgres, the default) or SQLite (DB=sqlite):
# 50 sockets x 40 turns, 20 words, A B A B for 3 rounds, each run on a fresh database and a fresh
# server. The minimal server's path is MINIMAL (by default where this project keeps it); it is
# started as `python PATH --port N` with BENCH_ORJSON=1 and its database in its environment
# (BENCH_PG_DSN; on SQLite BENCH_SQLITE_PATH, with BENCH_SQLITE_SYNC=FULL, chat-server's durability).
# Prints: round, server, turns/s, done p99 ms, the server's CPU ms/turn, the machine's (all cores:
# server, PostgreSQL, load generator) and the load generator's CPU ms/turn, the cores busy, CPU
# seconds stolen by the hypervisor, failures. PostgreSQL: at 127.0.0.1:5432 (trust). Needs the
# project's venv.
# ROUNDS=n and SERVERS="chat-server" (one of the two) for a quicker look; CHAT_SERVER=path/to/chat-server
# measures another build (a venv without the test extras, say). With both servers, the
# last lines are the ratio of each round (chat-server / minimal), their median, and the medians'.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
py=$root/.venv/bin/python
kind=${DB:-postgres}
if [ "$kind" = sqlite ]; then minimal=${MINIMAL:-$root/../shared/bench/raw_ws_sqlite.py}
else minimal=${MINIMAL:-$root/../shared/bench/raw_ws_pg.py}; fi
work=$(mktemp -d)
echo "round server turns/s done_p99_ms server_cpu_ms machine_cpu_ms loadgen_cpu_ms busy_cores stolen_s failures"
for round in $(seq ${ROUNDS:-3}); do
  for server in ${SERVERS:-chat-server minimal}; do
    db=bench_min_$RANDOM$RANDOM
    if [ "$kind" = sqlite ]; then
      url=sqlite+aiosqlite:///$work/$db.db
      minimal_env=(BENCH_SQLITE_PATH=$work/$db-minimal.db BENCH_SQLITE_SYNC=FULL)
    else
      psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" postgres
      url=postgresql+asyncpg://postgres@127.0.0.1:5432/$db
      minimal_env=(BENCH_PG_DSN=postgresql://postgres@127.0.0.1:5432/$db)
    fi
    port=$((20000 + RANDOM % 20000))
    if [ "$server" = chat-server ]; then
      (cd "$work" && CHAT_DATABASE_URL=$url CHAT_ECHO_DELAY_MS=0 \
        CHAT_RATE_LIMIT_PER_MINUTE=1000000 CHAT_MAX_FRAMES_PER_SECOND=100000 CHAT_OPEN_MODE_USERS_PER_MINUTE=0 \
        exec "${CHAT_SERVER:-$root/.venv/bin/chat-server}" --port $port >"$work/$server-$round.log" 2>&1) &
    else
      (cd "$work" && exec env BENCH_ORJSON=1 "${minimal_env[@]}" "$py" "$minimal" --port $port >"$work/$server-$round.log" 2>&1) &
    fi
    for _ in $(seq 300); do nc -z 127.0.0.1 $port 2>/dev/null && break; sleep 0.1; done
    sleep 1
    pid=$(pgrep -f -- "--port $port" | head -1)
    if [ -z "$pid" ]; then  # it did not start: say why, and count the round as failed
      echo "round $round: $server did not start; the end of its log:" >&2
      tail -5 "$work/$server-$round.log" >&2
    fi
    "$py" "$root/bench/loadgen.py" --url ws://127.0.0.1:$port/ws --sockets 50 --turns 40 --words 20 --pid "$pid" \
      --json | tail -1 | "$py" -c 'import json,sys; r=json.load(sys.stdin); print(sys.argv[1], sys.argv[2],
      r["turns_per_s"], r["done_ms"]["p99"], r["cpu_ms_per_turn"], r["machine_cpu_ms_per_turn"],
      r["loadgen_cpu_ms_per_turn"], r["machine_busy_cores"], r["steal_s"], r["failures"])' "$round" "$server" \
      | tee -a "$work/rounds"
    [ -n "$pid" ] && kill "$pid"; sleep 1
    if [ "$kind" = postgres ]; then psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE $db WITH (FORCE)" postgres; fi
  done
done
"$py" - "$work/rounds" <<'SUMMARY'
import statistics, sys
runs: dict[str, dict[str, float]] = {}
for line in open(sys.argv[1]):
    round_, server, turns = line.split()[:3]
    runs.setdefault(server, {})[round_] = float(turns)
ours, minimal = runs.get("chat-server", {}), runs.get("minimal", {})
ratios = [ours[r] / minimal[r] for r in ours if r in minimal]
if ratios:
    print("ratio per round:", " ".join(f"{x:.2f}" for x in ratios))
    print(f"median ratio {statistics.median(ratios):.2f} (lowest {min(ratios):.2f}); ratio of the medians "
          f"{statistics.median(ours.values()) / statistics.median(minimal.values()):.2f}")
SUMMARY
rm -rf "$work"
