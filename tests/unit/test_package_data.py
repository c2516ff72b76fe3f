"""The migrations and the page ship inside the package: every file of the top-level alembic/ and
static/ is matched by a package-data glob of pyproject.toml (a new kind of file would otherwise be
left out of the wheel without a word), and the package finds them through its own symlinks.
.ci/wheel-check proves the rest on a built wheel, installed."""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path

from server.resources import migrations_dir, static_dir

REPO = Path(__file__).resolve().parents[2]
SHIPPED_AS = {"alembic": "migrations", "static": "static"}  # top-level directory: its name in the package


def package_data() -> set[str]:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["server"]
    return {path for pattern in patterns for path in glob.glob(pattern, root_dir=REPO / "server", recursive=True)}


def test_every_file_of_the_migrations_and_the_page_is_package_data():
    files = {f"{name}/{path.relative_to(REPO / top).as_posix()}"
             for top, name in SHIPPED_AS.items()
             for path in (REPO / top).rglob("*")
             if path.is_file() and "__pycache__" not in path.parts}
    assert "migrations/env.py" in files and "static/widget.js" in files
    assert files - package_data() == set()


def test_the_package_finds_the_top_level_directories_through_its_symlinks():
    for top, name in SHIPPED_AS.items():
        assert (REPO / "server" / name).is_symlink()
        assert (REPO / "server" / name).readlink() == Path("..", top)
    assert migrations_dir() == (REPO / "alembic").resolve()
    assert static_dir() == (REPO / "static").resolve()
