"""One log record, one line: what a client sent cannot forge a log line, nor leave its token there.

Our own log lines show client values with %r. This filter, on the handlers, is the backstop for
every logger, uvicorn's included: uvicorn logs a WebSocket's path URL-decoded (a %0A in it is a
newline) and with its query string, which carries ?token=. In the arguments of each record,
control characters are escaped (\\n stays visible as the two characters \\ and n) and token
values are masked. The format string and tracebacks are ours and are left alone.
"""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_TOKEN = re.compile(r"(?i)(\btoken=)[^&\s\"']+")


def one_line(text: str) -> str:
    text = _TOKEN.sub(r"\1***", text)
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class OneLinePerRecord(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(one_line(a) if isinstance(a, str) else a for a in record.args)
        return True


def install() -> None:
    """On every handler of the root logger (set up by the cli)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, OneLinePerRecord) for f in handler.filters):
            handler.addFilter(OneLinePerRecord())
