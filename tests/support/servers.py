"""A real `chat-server` process on loopback, and fresh PostgreSQL databases for it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("CHAT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- PostgreSQL ---------------------------------------------------------------------------------
async def _pg_execute(sql: str, dbname: str | None = None) -> None:
    import asyncpg

    url = PG_ADMIN_URL if dbname is None else PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_execute(sql: str, dbname: str | None = None) -> None:
    """On a fresh loop in a thread, so that async tests (inside a running loop) can call it too."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(_pg_execute(sql, dbname))
        except BaseException as e:  # re-raised in the caller
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if errors:
        raise errors[0]


def pg_unavailable_reason() -> str | None:
    """Why PostgreSQL cannot be used here, or None when it can."""
    try:
        pg_execute("SELECT 1")
    except Exception as e:  # any failure to reach it means: skip (or fail, when required)
        return f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {e!r}"
    return None


def create_pg_database() -> tuple[str, str]:
    name = "chat_test_" + uuid.uuid4().hex[:12]
    pg_execute(f'CREATE DATABASE "{name}"')
    netloc = PG_ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0]
    return name, f"postgresql+asyncpg://{netloc}/{name}"


def drop_pg_database(name: str) -> None:
    try:
        pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as e:  # best effort: a leftover test database is harmless
        print(f"could not drop {name}: {e!r}")


# -- the server process -----------------------------------------------------------------------------
class ServerProcess:
    """chat-server as a subprocess: started, signalled, killed and restarted on one database."""

    def __init__(self, db_url: str, env: dict[str, str] | None = None, workdir: Path | None = None):
        self.db_url = db_url
        self.env = dict(env or {})
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="chat-srv-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_paths: list[Path] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def full_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "OPENAI_", "PYTEST_"))}
        env.update({"PYTHONUNBUFFERED": "1", "CHAT_DATABASE_URL": self.db_url, "CHAT_ECHO_DELAY_MS": "0",
                    # Every test comes from 127.0.0.1: the per-address limits are off unless a test
                    # (tests/e2e/test_attacks.py) turns them on.
                    "CHAT_OPEN_MODE_USERS_PER_MINUTE": "0", "CHAT_HTTP_REQUESTS_PER_MINUTE": "0",
                    "CHAT_HTTP_REQUESTS_PER_MINUTE_PER_ADDRESS": "0"})
        env.update(self.env)
        return env

    def start(self, timeout: float = 30) -> ServerProcess:
        self.port = free_port()
        log = self.workdir / f"server-{len(self.log_paths) + 1}.log"
        self.log_paths.append(log)
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "chat-server"), "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.workdir, env=self.full_env(), stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chat-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"chat-server not healthy within {timeout}s:\n{self.log_tail()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """kill -9: no cleanup, no flush, nothing."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> ServerProcess:
        self.kill()
        return self.start()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.log_paths if p.exists())

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, e.g. metric("chat_turns_total", 'status="complete"'): 0 for a
        label set not counted yet; an AssertionError for a metric the server does not have, so
        that an assertion like `== 0` cannot outlive a rename."""
        text = httpx.get(self.base_url + "/metrics", timeout=5).text
        wanted = f"{name}{{{labels}}}" if labels else name
        families = set()
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
            if line.startswith("# HELP "):
                families.add(line.split(" ", 3)[2])
        assert any(name == f or name.startswith(f + "_") for f in families), f"/metrics has no {name}"
        return 0.0
