"""What an operator sees when something is wrong: one line on stderr naming the setting, the value
(secrets redacted) and the fix, exit status 2 and no traceback; warnings for settings that are
ignored; the CLI's options; a taken port; a clean exit on Ctrl-C and SIGTERM.

Each case runs `chat-server` as a subprocess and reads its stderr and exit status.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from support.servers import PG_ADMIN_URL, VENV_BIN, ServerProcess, free_port

CHAT_SERVER = str(VENV_BIN / "chat-server")
SECRET = "operator-errors-test-secret-" + "z" * 40


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "OPENAI_", "PYTEST_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run(args: list[str], cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHAT_SERVER, *args], cwd=cwd, env=clean_env(**env), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_line_error(r: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 2, exactly one line on stderr, starting with chat-server:, holding each of `expected`."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("chat-server: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


# -- bad values ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, value, expected", [
    ("CHAT_MAX_MESSAGE_CHARS", "abc", ["CHAT_MAX_MESSAGE_CHARS='abc'", "whole number", "32000"]),
    ("CHAT_MAX_MESSAGE_CHARS", "0", ["CHAT_MAX_MESSAGE_CHARS='0'", "at least 1"]),
    ("CHAT_LOG_LEVEL", "verbose", ["CHAT_LOG_LEVEL='verbose'", "'debug'", "'info'"]),
    ("CHAT_SQLITE_SYNCHRONOUS", "sometimes", ["CHAT_SQLITE_SYNCHRONOUS", "'FULL'", "'NORMAL'"]),
    ("CHAT_LLM", "gpt", ["CHAT_LLM='gpt'", "'echo'", "'openai'"]),
    ("CHAT_WS_PER_MESSAGE_DEFLATE", "maybe", ["CHAT_WS_PER_MESSAGE_DEFLATE='maybe'", "true or false"]),
    ("CHAT_DATABASE_URL", "mysql://root:hunter2@db/chat", ["CHAT_DATABASE_URL", "unsupported database (mysql)",
                                                           "sqlite+aiosqlite://", "postgresql+asyncpg://"]),
    ("CHAT_DATABASE_URL", "./data/chat.db", ["CHAT_DATABASE_URL='./data/chat.db'", "not a URL",
                                             "sqlite+aiosqlite:///./data/chat.db"]),
])
def test_a_bad_value_is_one_line_naming_the_variable(tmp_path, name, value, expected):
    line = one_line_error(run(["migrate"], tmp_path, **{name: value}), *expected)
    assert "hunter2" not in line
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_a_bad_value_in_dotenv_is_reported_the_same_way(tmp_path):
    (tmp_path / ".env").write_text("CHAT_MAX_WAITING=lots\n")
    one_line_error(run(["migrate"], tmp_path), "CHAT_MAX_WAITING='lots'", "./.env", "whole number")


def test_a_short_auth_secret_is_refused_without_showing_it(tmp_path):
    line = one_line_error(run(["migrate"], tmp_path, CHAT_AUTH_SECRET="tiny-secret"),
                          "CHAT_AUTH_SECRET", "at least 32 characters", "secrets.token_urlsafe")
    assert "tiny-secret" not in line


@pytest.mark.parametrize("value", ["full", "Normal", " FULL "])
def test_enums_are_case_insensitive(tmp_path, value):
    r = run(["migrate"], tmp_path, CHAT_SQLITE_SYNCHRONOUS=value, CHAT_LOG_LEVEL="WARNING", CHAT_LLM="Echo")
    assert r.returncode == 0, r.stderr


def test_debug_shows_the_traceback(tmp_path):
    r = run(["migrate", "--debug"], tmp_path, CHAT_MAX_MESSAGE_CHARS="abc")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("chat-server: CHAT_MAX_MESSAGE_CHARS")


# -- warnings --------------------------------------------------------------------------------------
def test_an_unknown_chat_variable_is_a_warning_naming_the_closest(tmp_path):
    r = run(["migrate"], tmp_path, CHAT_DB_URL="sqlite:///x.db", CHAT_MAX_MESAGE_CHARS="10")
    assert r.returncode == 0, r.stderr
    assert "CHAT_DB_URL is not a chat-server setting" in r.stderr and "did you mean CHAT_DATABASE_URL?" in r.stderr
    assert "did you mean CHAT_MAX_MESSAGE_CHARS?" in r.stderr


def test_an_allowed_origin_without_scheme_is_a_warning(tmp_path):
    r = run(["migrate"], tmp_path, CHAT_ALLOWED_ORIGINS="app.example.com,https://ok.example")
    assert r.returncode == 0, r.stderr
    assert "'app.example.com' has no scheme, so it can never match" in r.stderr
    assert "ok.example" not in r.stderr


# -- the database ----------------------------------------------------------------------------------
def test_postgres_refused(tmp_path):
    port = free_port()
    line = one_line_error(
        run(["migrate"], tmp_path, CHAT_DATABASE_URL=f"postgresql+asyncpg://u:pw-123@127.0.0.1:{port}/db"),
        "CHAT_DATABASE_URL=postgresql+asyncpg://u:[redacted]@127.0.0.1", "connection refused")
    assert "pw-123" not in line


def test_postgres_unknown_host(tmp_path):
    one_line_error(run(["migrate"], tmp_path, CHAT_DATABASE_URL="postgres://u@no-such-host.invalid/db"),
                   "cannot resolve the host 'no-such-host.invalid'")


def test_postgres_that_never_answers(tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        line = one_line_error(run(["migrate"], tmp_path, CHAT_DB_CONNECT_TIMEOUT_S="1",
                                  CHAT_DATABASE_URL=f"postgresql+asyncpg://u@127.0.0.1:{port}/db"),
                              "did not answer within 1 s", "CHAT_DB_CONNECT_TIMEOUT_S")
    assert str(port) in line


def test_postgres_database_missing_says_createdb(tmp_path, pg):
    netloc = PG_ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0]
    one_line_error(run(["migrate"], tmp_path, CHAT_DATABASE_URL=f"postgresql+asyncpg://{netloc}/no_such_db_ops13"),
                   "'no_such_db_ops13' does not exist", "createdb -h 127.0.0.1 -p 5432 -U postgres no_such_db_ops13")


def test_an_unwritable_data_directory(tmp_path):
    workdir = tmp_path / "readonly"
    workdir.mkdir()
    workdir.chmod(0o555)
    prefix: list[str] = []
    if os.geteuid() == 0:  # root writes anywhere: run as nobody (setpriv is util-linux's, always on Debian)
        assert shutil.which("setpriv"), "as root, this test needs setpriv (util-linux) to run as nobody"
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    r = subprocess.run([*prefix, CHAT_SERVER], cwd=workdir, env=clean_env(), capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    one_line_error(r, "cannot write ./data (permission denied); set CHAT_DATABASE_URL to a writable place")


# -- the command line ------------------------------------------------------------------------------
def test_version_and_help(tmp_path):
    r = run(["--version"], tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("chat-server 0.")
    r = run(["--help"], tmp_path)
    assert r.returncode == 0 and "README.md" in r.stdout and ".env.example" in r.stdout and "CHAT_" in r.stdout
    r = run(["serve", "--help"], tmp_path)
    assert r.returncode == 0 and "--port" in r.stdout


@pytest.mark.parametrize("args", [["--port", "99999"], ["serve", "--port", "0"], ["serve", "--port", "http"]])
def test_a_bad_port_is_refused(tmp_path, args):
    r = run(args, tmp_path)
    assert r.returncode == 2 and "--port" in r.stderr and "Traceback" not in r.stderr


class Serve(ServerProcess):
    """chat-server started as `chat-server serve --port P`, options after the subcommand."""

    def start(self, timeout: float = 30) -> ServerProcess:  # type: ignore[override]
        self.port = free_port()
        log = self.workdir / f"server-{len(self.log_paths) + 1}.log"
        self.log_paths.append(log)
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen([CHAT_SERVER, "serve", "--port", str(self.port)], cwd=self.workdir,
                                         env=self.full_env(), stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_text()
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError(self.log_text())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_with_options_after_the_subcommand_and_a_clean_exit_on_a_signal(tmp_path, sig):
    server = Serve(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}", {}, tmp_path)
    try:
        server.start()
        assert f"chat-server on http://127.0.0.1:{server.port}" in server.log_text()
        assert "model echo (built in)" in server.log_text()
        server.signal(sig)
        assert server.wait(15) == 0
    finally:
        server.kill()
    log = server.log_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log


def test_address_in_use_is_one_line_and_nothing_claims_to_have_started(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = run(["--port", str(port)], tmp_path)
    line = one_line_error(r, f"cannot listen on 127.0.0.1:{port}", "already in use", "--port")
    assert "started" not in line.lower() and r.stdout == ""


def test_start_line_names_the_model_and_a_silent_backend_is_a_warning(tmp_path):
    backend = f"http://127.0.0.1:{free_port()}/v1"
    server = ServerProcess(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}", {
        "CHAT_LLM": "openai", "OPENAI_BASE_URL": backend, "OPENAI_API_KEY": "sk-test-" + "q" * 20,
        "CHAT_MODEL": "gpt-4o-mini"}, tmp_path)
    try:
        server.start()
        deadline = time.monotonic() + 15
        while "does not answer" not in server.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.kill()
    log = server.log_text()
    assert f"model gpt-4o-mini at {backend}" in log
    assert f"WARNING server.serve: the model backend at {backend} does not answer" in log
    assert "q" * 20 not in log


# -- chat-server token -----------------------------------------------------------------------------
def test_token_without_the_secret_for_a_token_mode_server_is_refused(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
    server = ServerProcess(url, {"CHAT_AUTH_SECRET": SECRET}, tmp_path)
    try:
        server.start()
    finally:
        server.kill()
    one_line_error(run(["token", "--user", "alice"], tmp_path, CHAT_DATABASE_URL=url),
                   "CHAT_AUTH_SECRET is not set", "token mode", "set CHAT_AUTH_SECRET")
    ok = run(["token", "--user", "alice"], tmp_path, CHAT_DATABASE_URL=url, CHAT_AUTH_SECRET=SECRET)
    assert ok.returncode == 0 and ok.stdout.count(".") == 2 and ok.stderr == ""


def test_token_in_open_mode_says_which_secret_it_used(tmp_path):
    r = run(["token", "--user", "alice"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "open-mode secret kept in the database (sqlite+aiosqlite:///./data/chat.db)" in r.stderr
    assert r.stdout.count(".") == 2


# -- an unsupported uvicorn --------------------------------------------------------------------------
def test_an_unsupported_uvicorn_stops_the_start_with_one_line_naming_the_versions_that_work(tmp_path):
    """As if pip had installed a uvicorn past the pin: the start says so, instead of failing
    later, per socket, in private methods that changed."""
    launcher = ("import sys, uvicorn; uvicorn.__version__ = '0.61.0'; "
                "from server.cli import main; sys.argv = ['chat-server', 'serve', '--port', '8799']; main()")
    r = subprocess.run([str(VENV_BIN / "python"), "-c", launcher], cwd=tmp_path, env=clean_env(),
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    one_line_error(r, "uvicorn 0.61.0 is not supported", ">=0.54,<0.60", "pip install")
    assert not (tmp_path / "data").exists(), "nothing was created before the check"
