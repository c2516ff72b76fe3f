"""Logging for chat-server: one handler, one format, one line per record, and no credential in
any line.

A token is a credential (in open mode it *is* the account), and uvicorn logs a socket's request
target with its query string (`"WebSocket /ws?token=eyJ…" [accepted]`). Redaction is done in the
formatter of our one root handler rather than in a filter on one logger: every logger propagates
to it (uvicorn's, websockets' frame dumps at debug, asyncio's, ours), and the formatter sees the
final text, tracebacks included, whatever the arguments were.

One record, one line: what a client sent cannot forge a log line. Our own lines show client
values with %r; as the backstop for every logger (uvicorn logs a socket's path URL-decoded, so a
%0A in it is a newline), control characters in a record's arguments are escaped (a newline shows
as the two characters \\ and n). The format string and tracebacks are ours and are left alone.
"""

from __future__ import annotations

import logging
import re
import sys
import time

REDACTED = "[redacted]"

# (a substring every match contains, lower-cased: a cheap test that skips the regex on most lines;
#  the pattern; its replacement). Most log lines hold none, and cost a lower() and five `in`s.
_PATTERNS = [
    # ?token=… / &access_token=… / api_key=… in a query string or anywhere else.
    ("=", re.compile(r"((?:^|[?&\s\"'(])(?:token|access_token|api_key|apikey|key|secret)=)[^&\s\"'<>]+", re.I),
     r"\1" + REDACTED),
    # Authorization: Bearer …, as a header line, a repr'd tuple or a dict.
    ("authorization", re.compile(
        r"(\bauthorization\b['\"]?\s*[:=,]\s*b?['\"]?\s*)[^\s'\",)]+(?:\s+[^\s'\",)]+)?", re.I), r"\1" + REDACTED),
    ("bearer", re.compile(r"(\bbearer\s+)[A-Za-z0-9._~+/=-]+", re.I), r"\1" + REDACTED),
    # Any JWT (header.payload.signature), wherever it appears: the ready frame at debug level, say.
    ("eyj", re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?"), REDACTED),
    # A password in a URL: scheme://user:password@host.
    ("://", re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@", re.I), r"\1" + REDACTED + "@"),
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")

_secrets: tuple[str, ...] = ()  # longest first, so that one containing another is masked whole


def add_secret(value: str | None) -> None:
    """A value that must never be logged verbatim (CHAT_AUTH_SECRET, OPENAI_API_KEY, …)."""
    global _secrets
    if value and len(value) >= 4 and value not in _secrets:
        _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    lowered = text.lower()
    for trigger, pattern, replacement in _PATTERNS:
        if trigger in lowered:
            text = pattern.sub(replacement, text)
    return text


def shown_url(url: str) -> str:
    """A database URL as it may be shown or logged: its password masked."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def one_line(value: object) -> object:
    if isinstance(value, str) and _CONTROL.search(value):
        return _CONTROL.sub(lambda m: repr(m.group())[1:-1], value)
    return value


class RedactingFormatter(logging.Formatter):
    _second: int | None = None
    _second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple) and args and any(isinstance(a, str) and _CONTROL.search(a) for a in args):
            record.args = tuple(one_line(a) for a in args)
        return redact(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # The date and time to the second change once a second, not once a line (strftime was a
        # tenth of a line's cost, with two lines a turn).
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second, self._second_text = second, time.strftime(self.default_time_format,
                                                                    self.converter(record.created))
        return f"{self._second_text},{int(record.msecs):03d}"


class ClientFaultsWithoutTraceback(logging.Filter):
    """uvicorn logs a client's invalid UTF-8 as an error with a traceback; it is the client's fault
    (answered with 1007), so one warning line, or any client could flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Invalid UTF-8 sequence received from client"):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging(level: str) -> None:
    # What no line of ours shows, and the logging module would otherwise find out for every
    # record: the caller's file and line (a walk up the stack), the thread and process names.
    logging._srcfile = None  # type: ignore[attr-defined]  # the documented switch (logging HOWTO, "Optimization")
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.error").addFilter(ClientFaultsWithoutTraceback())
    logging.getLogger("uvicorn.error").setLevel(max(logging.INFO, root.level))
    # Our own lines say what was migrated and what the model backend did.
    for noisy in ("alembic", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
