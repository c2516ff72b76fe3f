"""Configuration from CHAT_* variables and ./.env (server/config.py), and the Origin rule of the /ws
handshake (server/web/ws_endpoint.py origin_allowed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.config import DEFAULT_DATABASE_URL, Settings
from server.web.ws_endpoint import origin_allowed


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CHAT_* from the caller's environment and no stray .env: each test sets exactly what it reads."""
    for name in list(os.environ):
        if name.startswith(("CHAT_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


# -- defaults --------------------------------------------------------------------------------------------
def test_defaults():
    s = Settings()
    assert s.database_url == DEFAULT_DATABASE_URL == "sqlite+aiosqlite:///./data/chat.db"
    assert s.is_sqlite and s.sqlite_path == Path("data/chat.db")
    assert s.max_message_chars == 32_000
    assert s.max_waiting == 8
    assert s.sqlite_synchronous == "FULL"
    assert s.send_timeout_s == 10.0
    assert s.allowed_origins == []
    assert s.token_mode is False
    assert s.llm == "echo"


def test_env_values_are_read(monkeypatch):
    monkeypatch.setenv("CHAT_MAX_MESSAGE_CHARS", "500")
    monkeypatch.setenv("CHAT_MAX_WAITING", "2")
    monkeypatch.setenv("CHAT_SQLITE_SYNCHRONOUS", "NORMAL")
    monkeypatch.setenv("CHAT_ECHO_DELAY_MS", "0")
    monkeypatch.setenv("CHAT_SEND_TIMEOUT_S", "2.5")
    s = Settings()
    assert (s.max_message_chars, s.max_waiting, s.sqlite_synchronous, s.echo_delay_ms, s.send_timeout_s) == \
        (500, 2, "NORMAL", 0, 2.5)


def test_dotenv_in_the_working_directory_is_read_and_the_environment_wins(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("CHAT_MAX_WAITING=3\nCHAT_MAX_MESSAGE_CHARS=77\n")
    monkeypatch.setenv("CHAT_MAX_MESSAGE_CHARS", "99")
    s = Settings()
    assert (s.max_waiting, s.max_message_chars) == (3, 99)


@pytest.mark.parametrize("name, value", [
    ("CHAT_MAX_MESSAGE_CHARS", "0"),
    ("CHAT_MAX_WAITING", "-1"),
    ("CHAT_SQLITE_SYNCHRONOUS", "OFF"),
    ("CHAT_DB_POOL_SIZE", "0"),
    ("CHAT_SEND_TIMEOUT_S", "0"),
    ("CHAT_LLM", "mystery"),
])
def test_bad_values_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


# -- allowed origins -----------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    ("https://a.example", ["https://a.example"]),
    ("https://a.example,https://b.example", ["https://a.example", "https://b.example"]),
    (" https://a.example/ , http://b.example:8080/ ", ["https://a.example", "http://b.example:8080"]),
    ("https://a.example,,", ["https://a.example"]),
    ("", []),
    (" , ", []),
])
def test_allowed_origins_split_on_commas_and_trailing_slashes_stripped(monkeypatch, raw, expected):
    monkeypatch.setenv("CHAT_ALLOWED_ORIGINS", raw)
    assert Settings().allowed_origins == expected


# -- database URL ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    ("postgres://u:p@db:5432/chat", "postgresql+asyncpg://u:p@db:5432/chat"),
    ("postgresql://u@127.0.0.1/chat?sslmode=disable", "postgresql+asyncpg://u@127.0.0.1/chat?sslmode=disable"),
    ("postgresql+asyncpg://u@h/chat", "postgresql+asyncpg://u@h/chat"),
    ("sqlite:///./data/x.db", "sqlite+aiosqlite:///./data/x.db"),
    ("sqlite+aiosqlite:////abs/path/x.db", "sqlite+aiosqlite:////abs/path/x.db"),
])
def test_database_url_gets_the_async_driver(monkeypatch, raw, expected):
    monkeypatch.setenv("CHAT_DATABASE_URL", raw)
    assert Settings().database_url == expected


@pytest.mark.parametrize("url, path", [
    ("sqlite+aiosqlite:///./data/chat.db", Path("data/chat.db")),
    ("sqlite+aiosqlite:////tmp/x/chat.db", Path("/tmp/x/chat.db")),
    ("sqlite+aiosqlite:///chat.db?mode=rwc", Path("chat.db")),
    ("sqlite+aiosqlite:///:memory:", None),
    ("postgresql+asyncpg://u@h/chat", None),
])
def test_sqlite_path(url, path):
    assert Settings(database_url=url).sqlite_path == path


# -- derived values ------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", [1, 100, 32_000])
def test_max_frame_bytes_fits_a_fully_escaped_content_at_the_limit(monkeypatch, limit):
    monkeypatch.setenv("CHAT_MAX_MESSAGE_CHARS", str(limit))
    assert Settings().max_frame_bytes == 12 * limit + 4096


def test_max_frame_bytes_default():
    assert Settings().max_frame_bytes == 12 * 32_000 + 4096


STRONG = "s3cret-" + "x" * 25  # 32 characters, the least accepted


@pytest.mark.parametrize("value, token_mode", [(None, False), ("", False), (STRONG, True)])
def test_token_mode_follows_the_auth_secret(monkeypatch, value, token_mode):
    if value is not None:
        monkeypatch.setenv("CHAT_AUTH_SECRET", value)
    assert Settings().token_mode is token_mode


@pytest.mark.parametrize("value", ["s3cret", " ", "changeme", STRONG[:-1]])
def test_a_short_or_placeholder_auth_secret_is_refused(monkeypatch, value):
    monkeypatch.setenv("CHAT_AUTH_SECRET", value)
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings()


def test_auth_secret_is_not_shown_in_the_repr(monkeypatch):
    secret = "very-private-value-" + "y" * 20
    monkeypatch.setenv("CHAT_AUTH_SECRET", secret)
    s = Settings()
    assert secret not in repr(s) and secret not in str(s)
    assert s.auth_secret is not None and s.auth_secret.get_secret_value() == secret


@pytest.mark.parametrize("url, size", [
    ("sqlite+aiosqlite:///./data/chat.db", 4),
    ("postgresql+asyncpg://u@h/chat", 10),
])
def test_pool_size_default_per_database(monkeypatch, url, size):
    monkeypatch.setenv("CHAT_DATABASE_URL", url)
    assert Settings().pool_size == size
    monkeypatch.setenv("CHAT_DB_POOL_SIZE", "3")
    assert Settings().pool_size == 3


# -- Origin ----------------------------------------------------------------------------------------------
HOST = "127.0.0.1:8000"
ALLOWED = ["https://app.example", "http://localhost:3000"]


@pytest.mark.parametrize("origin, host, allowed, ok", [
    (None, HOST, [], True),
    (None, None, [], True),
    ("http://127.0.0.1:8000", HOST, [], True),
    ("https://127.0.0.1:8000", HOST, [], True),
    ("http://127.0.0.1:8000/", HOST, [], True),
    ("http://chat.example", "chat.example", [], True),
    ("http://CHAT.Example", "chat.example", [], True),
    ("http://chat.example", "CHAT.EXAMPLE", [], True),
    ("https://app.example", HOST, ALLOWED, True),
    ("https://app.example/", HOST, ALLOWED, True),
    ("http://localhost:3000", HOST, ALLOWED, True),
    ("http://evil.example", HOST, [], False),
    ("http://evil.example", HOST, ALLOWED, False),
    ("http://127.0.0.1:9000", HOST, [], False),
    ("http://127.0.0.1", HOST, [], False),
    ("http://app.example", HOST, ALLOWED, False),
    ("https://app.example.evil.example", HOST, ALLOWED, False),
    ("http://127.0.0.1:8000@evil.example", HOST, [], False),
    ("ws://127.0.0.1:8000", HOST, [], False),
    ("file://127.0.0.1:8000", HOST, [], False),
    ("null", HOST, [], False),
    ("null", "null", [], False),
    ("", HOST, [], False),
    ("http://127.0.0.1:8000", None, [], False),
])
def test_origin_allowed(origin, host, allowed, ok):
    assert origin_allowed(origin, host, allowed) is ok
