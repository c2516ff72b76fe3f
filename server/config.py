"""All configuration: one Settings object read from CHAT_* variables and ./.env."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./data/chat.db"
MIN_SECRET_CHARS = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHAT_", env_file=".env", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    # Pool size; None picks per database (SQLite 4, PostgreSQL 10). Never overflows: a burst
    # waits db_pool_timeout_s for a connection rather than opening new ones.
    db_pool_size: int | None = Field(default=None, ge=1)
    db_pool_timeout_s: float = Field(default=5.0, gt=0)
    # PostgreSQL: every call on a person's path is bounded, so that a database out of reach (a
    # pulled cable, a frozen host: no reset, no close) answers `unavailable` within seconds
    # instead of never. A statement that times out discards its connection.
    db_connect_timeout_s: float = Field(default=5.0, gt=0)
    db_statement_timeout_s: float = Field(default=5.0, gt=0)
    sqlite_synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    sqlite_busy_timeout_ms: int = Field(default=10_000, ge=0)

    auth_secret: SecretStr | None = None
    allowed_origins: Annotated[list[str], NoDecode] = []
    # Host header values served (names, without port; "*.example.com" for subdomains). A page on
    # a DNS-rebinding name passes the Origin check, because its Origin and Host agree; only the
    # Host tells it apart. Empty: local names when bound to loopback, else any (set it in production).
    allowed_hosts: Annotated[list[str], NoDecode] = []

    max_message_chars: int = Field(default=32_000, ge=1)
    # Abuse limits (per user unless said otherwise).
    rate_limit_per_minute: int = Field(default=60, ge=1)  # messages; the contract promises at least 30
    # resume, history and cancel by id, per user across the user's sockets: each costs database
    # reads or a broadcast to every process; beyond it they get rate_limited (the socket stays).
    reads_per_minute: int = Field(default=300, ge=1)
    flood_close_after: int = Field(default=20, ge=1)  # rate-limited messages on one socket, then close 1008
    max_sockets_per_user: int = Field(default=10, ge=1)  # past it: close 1013
    max_frames_per_second: float = Field(default=50.0, gt=0)  # per socket, any frame; sustained excess: 1008
    # Open mode: new users (token-less handshakes) per client address per minute, so that
    # reconnecting without a token does not escape every per-user limit; past it: HTTP 429. 0: none.
    open_mode_users_per_minute: int = Field(default=60, ge=0)
    # Open mode: the life of a minted token; every `ready` hands out a fresh one, so only a user
    # away for longer than this becomes a new user.
    open_mode_token_ttl_s: float = Field(default=30 * 86400, gt=0)
    # HTTP API requests per minute (bursts of that many), per user and per client address;
    # past it: 429 with Retry-After. 0: no limit.
    http_requests_per_minute: int = Field(default=300, ge=0)
    http_requests_per_minute_per_address: int = Field(default=600, ge=0)
    # Peers trusted to name the client in X-Forwarded-For (uvicorn's forwarded_allow_ips): the
    # address the per-address limits count. Comma-separated IPs or networks; "*" trusts everyone.
    trusted_proxies: str = "127.0.0.1"
    # Off by default: chat frames are small (a delta is ~100 bytes), so compression saves little,
    # and a socket that negotiates it (browsers do) costs ~37 KiB more of zlib state and ~40% more
    # server CPU per turn (docs/benchmarks.md).
    ws_per_message_deflate: bool = False
    max_waiting: int = Field(default=8, ge=0)
    send_timeout_s: float = Field(default=10.0, gt=0)
    # A connection that has not sent a whole request (headers and body) this long after opening,
    # or after its previous response, is closed: uvicorn alone waits forever (slowloris).
    request_timeout_s: float = Field(default=10.0, gt=0)
    ws_ping_interval_s: float = Field(default=20.0, ge=0)
    shutdown_grace_s: float = Field(default=6.0, gt=0)

    # A reply whose socket went away goes on this long (0: it stops at once, stored interrupted),
    # for at most this many detached replies per user; past that a detached reply stops at once.
    detached_reply_s: float = Field(default=120.0, ge=0)
    max_detached_replies: int = Field(default=3, ge=0)
    # A reply running longer than this has its text so far saved this often (0: never), so that
    # after a crash the sweep stores what the person saw rather than an empty reply.
    reply_checkpoint_s: float = Field(default=5.0, ge=0)

    # Many processes on one PostgreSQL (docs/multi-process.md). pg_notify: the reply seam crosses
    # processes through LISTEN/NOTIFY; turn it off for one process, or behind PgBouncer in
    # transaction mode (LISTEN needs a session of its own). Leases are kept either way: a process
    # renews its own every heartbeat_s; one not renewed for lease_s is dead, and so is one whose
    # LISTEN session left PostgreSQL with its heartbeat older than lease_grace_s (kill -9).
    pg_notify: bool = True
    lease_s: float = Field(default=15.0, gt=0)
    heartbeat_s: float = Field(default=1.0, gt=0)
    lease_grace_s: float = Field(default=3.0, gt=0)
    # Deltas of a reply followed from another process are sent at most this often, coalesced.
    notify_tick_ms: int = Field(default=20, ge=1)

    llm: Literal["echo", "openai"] = "echo"
    llm_timeout_s: float = Field(default=120.0, gt=0)
    # A resent message whose reply another process is settling (a race of two resends, a takeover
    # after a crash) waits at most this long, then gets `unavailable` with its client_id.
    duplicate_wait_s: float = Field(default=30.0, gt=0)
    echo_delay_ms: int = Field(default=30, ge=0)
    openai_base_url: str | None = Field(default=None, validation_alias=AliasChoices("OPENAI_BASE_URL"))
    openai_api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("OPENAI_API_KEY"))
    model: str = "gpt-4o-mini"
    # The models a conversation may choose (GET /api/models); empty: the backend's own list.
    models: Annotated[list[str], NoDecode] = []
    models_cache_s: float = Field(default=300.0, ge=0)  # how long the backend's list is kept
    system_prompt: str = "You are a helpful assistant."
    # A conversation's title: "words" (its first message's first words) or "model" (after its first
    # reply, one short request to the backend; the first words stay if it fails).
    titles: Literal["words", "model"] = "words"
    title_timeout_s: float = Field(default=10.0, gt=0)
    title_max_tokens: int = Field(default=64, ge=8)  # room for a short reasoning preamble, stripped
    # Context sent with each turn: the latest messages that fit, oldest dropped first.
    context_messages: int = Field(default=40, ge=0)
    context_chars: int = Field(default=24_000, ge=0)
    llm_connect_timeout_s: float = Field(default=5.0, gt=0)
    llm_first_token_timeout_s: float = Field(default=30.0, gt=0)
    llm_idle_timeout_s: float = Field(default=30.0, gt=0)  # silence between chunks
    llm_retries: int = Field(default=2, ge=0)  # only before the first token

    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    # /metrics: open by default so that a scraper needs no setup; set, it asks for
    # `Authorization: Bearer <this>` (Prometheus: `authorization: {credentials: …}`).
    metrics_token: SecretStr | None = None
    # /docs and /openapi.json: off, so the API surface is not advertised; Swagger UI loads its
    # assets from a CDN, so it is blank offline anyway.
    api_docs: bool = False

    @field_validator("log_level", "llm", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: object) -> object:
        if isinstance(v, str):
            return [o.strip().rstrip("/") for o in v.split(",") if o.strip()]
        return v

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, v: object) -> object:
        if isinstance(v, str):
            return [m.strip() for m in v.split(",") if m.strip()]
        return v

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: object) -> object:
        if isinstance(v, str):
            return [h.strip().lower() for h in v.split(",") if h.strip()]
        return v

    @field_validator("auth_secret")
    @classmethod
    def _strong_secret(cls, v: SecretStr | None) -> SecretStr | None:
        # HS256 with a short or placeholder key can be brute-forced offline from one token.
        if v is not None and v.get_secret_value() and len(v.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(f"too short: it must be at least {MIN_SECRET_CHARS} characters (make one with: "
                             "python -c 'import secrets; print(secrets.token_urlsafe(48))')")
        return v

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, v: str) -> str:
        # Accept the URLs people paste from elsewhere and pick the async driver for them.
        for plain, async_ in (("postgres://", "postgresql+asyncpg://"), ("postgresql://", "postgresql+asyncpg://"),
                              ("sqlite://", "sqlite+aiosqlite://")):
            if v.startswith(plain):
                return async_ + v[len(plain):]
        if "://" not in v:
            raise ValueError("is not a URL; for a SQLite file write sqlite+aiosqlite:///" + (v or "./data/chat.db")
                             + ", for PostgreSQL postgresql+asyncpg://user@host/dbname")
        if not v.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(f"uses an unsupported database ({v.split('://', 1)[0]}); use "
                             "sqlite+aiosqlite:///path/to/chat.db or postgresql+asyncpg://user@host/dbname")
        return v

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def sqlite_path(self) -> Path | None:
        if not self.is_sqlite:
            return None
        path = self.database_url.split("///", 1)[1] if "///" in self.database_url else ""
        return Path(path.split("?", 1)[0]) if path and path != ":memory:" else None

    @property
    def pool_size(self) -> int:
        if self.db_pool_size is not None:
            return self.db_pool_size
        return 4 if self.is_sqlite else 10

    @property
    def max_frame_bytes(self) -> int:
        """A content at the limit fits however it is escaped (\\uXXXX\\uXXXX is 12 bytes)."""
        return 12 * self.max_message_chars + 4096

    @cached_property
    def token_mode(self) -> bool:
        return self.auth_secret is not None and bool(self.auth_secret.get_secret_value())
