"""server/logs.py redaction and the did-you-mean for unknown settings."""

from __future__ import annotations

import logging

import pytest

from server.logs import REDACTED, RedactingFormatter, add_secret, redact
from server.operator_errors import closest, known_names

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXBhcnQtb2YtdGhlLXRva2Vu"


@pytest.mark.parametrize("line, secret", [
    ('127.0.0.1:5000 - "WebSocket /ws?token=abc.def.ghi" [accepted]', "abc.def.ghi"),
    ('"WebSocket /ws?conversation_id=c1&token=opaque-123&sync=1" 403', "opaque-123"),
    ("headers: [(b'authorization', b'Bearer opaque-456')]", "opaque-456"),
    ("Authorization: Bearer opaque-789", "opaque-789"),
    ("{'authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz"),
    (f"< TEXT '{{\"type\":\"ready\",\"token\":\"{JWT}\"}}' [200 bytes]", JWT.rsplit(".", 1)[1]),
    ("postgresql+asyncpg://chat:hunter2@db.example/chat", "hunter2"),
])
def test_credentials_are_redacted(line, secret):
    out = redact(line)
    assert secret not in out and REDACTED in out


def test_ordinary_lines_are_left_alone():
    line = "committed user message a41c (conversation 5b0e, user u-3f0c, client_id k1); authorization failed"
    assert redact(line) == line


def test_configured_secrets_and_tracebacks_are_redacted():
    add_secret("my-configured-secret-value")
    formatter = RedactingFormatter("%(message)s")
    try:
        raise ValueError("bad value my-configured-secret-value in /ws?token=tok-in-traceback")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed: %s", ("my-configured-secret-value",),
                                   exc_info=__import__("sys").exc_info())
    out = formatter.format(record)
    assert "my-configured-secret-value" not in out and "tok-in-traceback" not in out and "Traceback" in out


@pytest.mark.parametrize("typo, meant", [
    ("CHAT_DB_URL", "CHAT_DATABASE_URL"),
    ("CHAT_DATABASE", "CHAT_DATABASE_URL"),
    ("CHAT_LOGLEVEL", "CHAT_LOG_LEVEL"),
    ("CHAT_ALLOWED_ORIGIN", "CHAT_ALLOWED_ORIGINS"),
    ("CHAT_AUTH_SECRETS", "CHAT_AUTH_SECRET"),
])
def test_closest_known_setting(typo, meant):
    assert closest(typo, known_names()) == meant


def test_env_example_lists_every_setting_with_its_default():
    from pathlib import Path

    from server.config import Settings
    from server.operator_errors import env_name

    text = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    lines = {line.removeprefix("# ").split("=", 1)[0]: line.split("=", 1)[1]
             for line in text.splitlines() if line.startswith(("# CHAT_", "# OPENAI_")) and "=" in line}
    for field, info in Settings.model_fields.items():
        name = env_name(field)
        assert name in lines, f"{name} is missing from .env.example"
        default = info.default
        if isinstance(default, bool):
            assert lines[name] == str(default).lower(), name
        elif isinstance(default, int | float):
            assert float(lines[name]) == default, name
        elif isinstance(default, str):
            assert lines[name] == default, name


def test_the_line_time_is_the_standard_one_though_computed_once_a_second():
    ours, standard = RedactingFormatter("%(asctime)s %(message)s"), logging.Formatter("%(asctime)s %(message)s")
    base = 1_790_000_000.0
    for created in (base + 0.001, base + 0.999, base + 1.5, base + 1.5, base - 3600.25, base + 86_400.042):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == standard.format(record)


def test_a_secret_added_later_is_redacted_whole_even_inside_a_longer_one():
    add_secret("short-secret-value")
    add_secret("prefix-short-secret-value-suffix")
    out = redact("a prefix-short-secret-value-suffix and a short-secret-value")
    assert "secret-value" not in out and out.count(REDACTED) == 2
