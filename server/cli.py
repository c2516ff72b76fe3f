"""`chat-server [--host H] [--port P]`, `chat-server migrate`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from server.config import Settings


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.error").setLevel(max(logging.INFO, logging.getLogger().level))
    # Our own lines say what was migrated and what the model backend did.
    for noisy in ("alembic", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chat-server", description="A WebSocket chat server (chat.v1).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("serve", help="migrate the database, then serve (the default)")
    sub.add_parser("migrate", help="bring the database schema up to date, then exit")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    settings = Settings()
    setup_logging(settings.log_level)
    if args.command == "migrate":
        from server.db.migrate import migrate

        migrate(settings)
        return
    from server.serve import serve

    asyncio.run(serve(settings, args.host, args.port))
