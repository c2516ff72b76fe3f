"""The pytest plugin as a user gets it: an installed package, a test file, no conftest.

The example test file (also shown in the README) is copied into an empty directory and run there
with pytest in a subprocess, so that this project's conftest and tests/support are not on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent / "example" / "test_my_integration.py"
README = Path(__file__).parents[2] / "README.md"


def run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CHAT_", "PYTEST_", "PYTHONPATH"))}  # nothing of this session leaks in
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args],
                          cwd=directory, env=env, capture_output=True, text=True, timeout=300)


def test_an_example_test_file_runs_with_only_the_installed_package(tmp_path: Path):
    shutil.copy(EXAMPLE, tmp_path / "test_my_integration.py")
    result = run_pytest(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "4 passed" in output, output
    assert not any(tmp_path.rglob("conftest.py"))


def test_a_failing_test_shows_the_server_log(tmp_path: Path):
    (tmp_path / "test_fails.py").write_text(
        "def test_fails(chat_server_factory):\n"
        "    server = chat_server_factory(CHAT_LOG_LEVEL='info')\n"
        "    assert server.url.startswith('http://127.0.0.1:') and server.ws_url.endswith('/ws')\n"
        "    assert server.env['CHAT_LOG_LEVEL'] == 'info'\n"
        "    assert False, 'on purpose'\n")
    result = run_pytest(tmp_path)
    assert result.returncode == 1, result.stdout
    assert "chat-server log (http://127.0.0.1:" in result.stdout and "chat-server on http://" in result.stdout


def test_pytest_asyncio_tests_work_too(tmp_path: Path):
    # pytest-asyncio is in the test extra for this test alone: the package does not need it.
    (tmp_path / "test_async.py").write_text(
        "import pytest\n"
        "from server.client import ChatClient\n\n"
        "@pytest.mark.asyncio\n"
        "async def test_async(chat_server):\n"
        "    async with ChatClient(chat_server.ws_url) as chat:\n"
        "        assert (await chat.send('hi')).content == 'You said: hi'\n"
        "        await chat_server.arestart()\n"
        "        assert (await chat.send('again')).content == 'You said: again'\n")
    result = run_pytest(tmp_path, "-p", "no:anyio")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_the_readme_shows_the_example_file_as_it_is():
    assert EXAMPLE.read_text() in README.read_text()
