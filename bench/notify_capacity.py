#!/usr/bin/env python3
"""How much LISTEN/NOTIFY one PostgreSQL carries, as chat-server uses it: N "processes", each one
connection that LISTENs on the broadcast channel and sends, as fast as it can, one statement
`SELECT pg_notify(c, p) FROM unnest(...)` of --batch payloads of --bytes bytes (what one tick of a
busy process sends). Every process hears every other's payloads, as with chat-server's broadcast
records. Prints statements/s sent and payloads/s received per process.

    .venv/bin/python bench/notify_capacity.py --processes 2,8,16 --seconds 3
"""
from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg


async def one(url: str, seconds: float, batch: int, size: int, stop_at: float, counts: dict[str, int]) -> None:
    conn = await asyncpg.connect(url)
    received = 0

    def heard(*_: object) -> None:
        nonlocal received
        received += 1

    await conn.add_listener("bench_all", heard)
    sent = 0
    while time.monotonic() < stop_at:
        # Distinct payloads: PostgreSQL folds identical ones of one transaction into one.
        payloads = [f"{id(conn)}-{sent}-{i}-".ljust(size, "x") for i in range(batch)]
        await conn.execute("SELECT pg_notify('bench_all', p) FROM unnest($1::text[]) AS t(p)", payloads)
        sent += 1
    await asyncio.sleep(0.5)
    counts["sent"] += sent
    counts["received"] += received
    await conn.close()


async def run(url: str, processes: int, seconds: float, batch: int, size: int) -> None:
    counts = {"sent": 0, "received": 0}
    stop_at = time.monotonic() + seconds
    await asyncio.gather(*(one(url, seconds, batch, size, stop_at, counts) for _ in range(processes)))
    print(f"{processes:>3} processes: {counts['sent'] / seconds:8.0f} NOTIFY statements/s in all "
          f"({counts['sent'] * batch / seconds:8.0f} payloads/s of {size} B), each process received "
          f"{counts['received'] / processes / seconds:8.0f} payloads/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--processes", default="2,8,16")
    p.add_argument("--seconds", type=float, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--bytes", type=int, default=1000)
    args = p.parse_args()
    for n in (int(x) for x in args.processes.split(",")):
        asyncio.run(run(args.url, n, args.seconds, args.batch, args.bytes))


if __name__ == "__main__":
    main()
