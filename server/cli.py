"""`chat-server [serve] [--host H] [--port P]`, `chat-server migrate`, `chat-server token`.

A mistake the operator can fix (a setting, the database, the port) is one line on stderr and exit
status 2; `--debug` or CHAT_LOG_LEVEL=debug adds the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback

from server import PROTOCOL, __version__
from server.config import Settings
from server.logs import add_secret, redact, setup_logging, shown_url
from server.operator_errors import OperatorError, load_settings, warn_about_settings

EXIT_OPERATOR_ERROR = 2

SETTINGS_HELP = """\
Settings come from CHAT_* environment variables, or from a .env file in the working directory:
see the Configuration table in README.md, or .env.example for every setting with its default.
A mistake in one is reported on one line, with exit status 2."""


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port; use 1 to 65535")
    return port


def _options(p: argparse.ArgumentParser, listen: bool, top: bool) -> None:
    # On the subcommand the defaults are suppressed, or they would overwrite values given before it.
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    if listen:
        p.add_argument("--host", default=default("127.0.0.1"), help="address to listen on (default 127.0.0.1)")
        p.add_argument("--port", type=port_number, default=default(8000), help="port to listen on (default 8000)")
    p.add_argument("--debug", action="store_true", default=default(False),
                   help="show the traceback behind an error (as CHAT_LOG_LEVEL=debug does)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chat-server", description="A WebSocket chat server (chat.v1).",
                                epilog=SETTINGS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _options(p, listen=True, top=True)
    p.add_argument("--version", action="version", version=f"chat-server {__version__} (protocol {PROTOCOL})")
    sub = p.add_subparsers(dest="command", metavar="{serve,migrate,token}")
    serve = sub.add_parser("serve", help="migrate the database, then serve (the default)", epilog=SETTINGS_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    _options(serve, listen=True, top=False)
    migrate = sub.add_parser("migrate", help="bring the database schema up to date, then exit")
    _options(migrate, listen=False, top=False)
    tok = sub.add_parser("token", help="print a token for a user, e.g. to test with wscat")
    _options(tok, listen=False, top=False)
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
    from server.bootstrap import open_mode_secret
    from server.db.engine import make_engine
    from server.db.uow import Database
    from server.serve import last_server_mode, prepare_database

    if settings.token_mode:
        assert settings.auth_secret is not None
        secret = settings.auth_secret.get_secret_value()
    else:
        await prepare_database(settings)
        if await last_server_mode(settings) == "token":
            raise OperatorError(
                "CHAT_AUTH_SECRET is not set, but the server on this database runs in token mode: a token "
                "signed with the open-mode secret would be refused; set CHAT_AUTH_SECRET to the server's secret")
        db = Database(make_engine(settings, pooled=False))
        try:
            secret = await open_mode_secret(db)
        finally:
            await db.dispose()
        print("chat-server: CHAT_AUTH_SECRET is not set: this token is signed with the open-mode secret kept in "
              f"the database ({shown_url(settings.database_url)}); only a server in open mode on that database "
              "accepts it",
              file=sys.stderr)
    return Authenticator(secret, settings.token_mode).mint(user_id, ttl_s or None)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    debug = bool(args.debug) or os.environ.get("CHAT_LOG_LEVEL", "").strip().lower() == "debug"
    try:
        run(args)
    except OperatorError as e:
        _fail(str(e), debug, EXIT_OPERATOR_ERROR)
    except KeyboardInterrupt:  # Ctrl-C before serving started (once serving, it shuts down gracefully)
        sys.exit(130)
    except Exception as e:
        _fail(f"unexpected error: {type(e).__name__}: {e}"
              + ("" if debug else " (run with --debug for the traceback)"), debug, 1)


def _fail(message: str, debug: bool, status: int) -> None:
    if debug:
        sys.stderr.write(redact(traceback.format_exc()))
    for line in message.splitlines():
        sys.stderr.write(f"chat-server: {redact(line)}\n")
    sys.stderr.flush()
    sys.exit(status)


def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    for secret in (settings.auth_secret, settings.openai_api_key, settings.metrics_token):
        add_secret(secret.get_secret_value() if secret is not None else None)
    # `token` prints a token for a script to capture: only warnings beside it.
    quiet = args.command == "token" and settings.log_level == "info"
    setup_logging("warning" if quiet else settings.log_level)
    warn_about_settings(settings)
    if args.command == "migrate":
        from server.serve import prepare_database

        asyncio.run(prepare_database(settings))
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
