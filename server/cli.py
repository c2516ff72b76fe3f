"""`chat-server [--host H] [--port P]`, `chat-server migrate`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from server.config import Settings


class ClientFaultsWithoutTraceback(logging.Filter):
    """uvicorn logs a client's invalid UTF-8 as an error with a traceback; it is the client's fault
    (answered with 1007), so one warning line, or any client could flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Invalid UTF-8 sequence received from client"):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.error").addFilter(ClientFaultsWithoutTraceback())
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
    tok = sub.add_parser("token", help="print a token for a user, e.g. to test with wscat")
    tok.add_argument("--user", required=True, help="the user id (the token's sub)")
    tok.add_argument("--ttl", type=duration, default=86400.0,
                     help="lifetime: seconds, or with a unit (30m, 12h, 7d); 0 for none (default 1d)")
    return p


def duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 30m, 12h, 7d)") from None


async def mint_token(settings: Settings, user_id: str, ttl_s: float) -> str:
    """Signed with CHAT_AUTH_SECRET, or in open mode with the secret kept in the database."""
    from server.auth import Authenticator
    from server.chat.services import open_mode_secret
    from server.db.engine import make_engine
    from server.db.migrate import upgrade_to_head
    from server.db.uow import Database

    if settings.token_mode:
        assert settings.auth_secret is not None
        secret = settings.auth_secret.get_secret_value()
    else:
        await upgrade_to_head(settings)
        db = Database(make_engine(settings, pooled=False))
        try:
            secret = await open_mode_secret(db)
        finally:
            await db.dispose()
    return Authenticator(secret, settings.token_mode).mint(user_id, ttl_s or None)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    settings = Settings()
    setup_logging(settings.log_level)
    if args.command == "migrate":
        from server.db.migrate import migrate

        migrate(settings)
        return
    if args.command == "token":
        print(asyncio.run(mint_token(settings, args.user, args.ttl)))
        return
    from server.serve import serve

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(settings, args.host, args.port))


def loop_factory():  # type: ignore[no-untyped-def]
    """uvloop where it is installed (it is a dependency on Linux): a third less CPU per frame."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
