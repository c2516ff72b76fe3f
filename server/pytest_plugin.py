"""pytest fixtures that run a real `chat-server` for your tests: `chat_server`, `chat_server_factory`.

Installing the package registers this plugin (the `pytest11` entry point), so no conftest is needed:

    import asyncio
    from server.client import ChatClient

    def test_hello(chat_server):
        async def main():
            async with ChatClient(chat_server.ws_url) as chat:
                assert (await chat.send("hello")).content == "You said: hello"
        asyncio.run(main())

Each server is a subprocess on a free port of 127.0.0.1, with its own working directory, a fresh
SQLite file and the echo backend without delay, unless the settings say otherwise. It is stopped
after the test; when the test fails, the end of its log is added to the report. The fixtures are
synchronous, so they serve plain, pytest-asyncio and anyio tests alike.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path

import pytest

__all__ = ["ChatServer", "chat_server", "chat_server_factory"]

_SERVERS = pytest.StashKey[list["ChatServer"]]()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ChatServer:
    """One `chat-server` process: `.url` (http), `.ws_url`, `.env` (its CHAT_* settings), and
    `.restart()`, `.stop()`, `.kill()`. A restart keeps the port and the database."""

    def __init__(self, env: Mapping[str, str], workdir: Path, start_timeout: float = 60.0) -> None:
        self.env = dict(env)
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.port = _free_port()
        self.log_path = workdir / "chat-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def database_url(self) -> str:
        return self.env["CHAT_DATABASE_URL"]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ChatServer:
        """Start it and return once `/healthz` answers (the schema is migrated by then)."""
        if self.running:
            return self
        # The user's own CHAT_* and OPENAI_* settings must not reach a test server.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "OPENAI_"))}
        env.update(self.env, PYTHONUNBUFFERED="1")
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- chat-server start {self.starts} on port {self.port} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chat-server exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"chat-server did not answer within {self.start_timeout:g}s:\n{self.log_tail()}")

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)  # its whole process group
        except (AttributeError, ProcessLookupError):
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (replies in flight are stored `interrupted`), then SIGKILL after `timeout`."""
        if not self.running:
            return
        assert self.proc is not None
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as in a crash."""
        if self.running:
            assert self.proc is not None
            self._signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> ChatServer:
        """Stop (if it still runs), start again on the same port and database; blocks until it answers."""
        self.stop()
        return self.start()

    async def arestart(self) -> ChatServer:
        """`restart()` for async tests: the event loop (and your clients) keep running meanwhile."""
        return await asyncio.to_thread(self.restart)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<ChatServer {self.url} {'running' if self.running else 'stopped'}>"


ChatServerFactory = Callable[..., ChatServer]


@pytest.fixture
def chat_server_factory(request: pytest.FixtureRequest,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatServerFactory]:
    """`chat_server_factory(CHAT_ECHO_DELAY_MS="50", ...)`: a started server with these settings
    (over the defaults: a fresh SQLite file, `CHAT_LLM=echo`, `CHAT_ECHO_DELAY_MS=0`); all are
    stopped after the test."""
    servers: list[ChatServer] = []

    def make(**settings: object) -> ChatServer:
        workdir = tmp_path_factory.mktemp("chat-server")
        env = {"CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'chat.db'}", "CHAT_LLM": "echo",
               "CHAT_ECHO_DELAY_MS": "0"}
        env.update({k: str(v) for k, v in settings.items()})
        server = ChatServer(env, workdir)
        servers.append(server)
        request.node.stash.setdefault(_SERVERS, []).append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop(timeout=5)


@pytest.fixture
def chat_server(chat_server_factory: ChatServerFactory) -> ChatServer:
    """A started server: fresh SQLite file, echo backend without delay, open mode."""
    return chat_server_factory()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                          pytest.TestReport]:
    report = yield
    if report.failed:
        for server in item.stash.get(_SERVERS, []):
            report.sections.append((f"chat-server log ({server.url})", server.log_tail()))
    return report
