"""Where the files the server ships beside its code are: the Alembic migrations and the chat page
and widget. This module is the one place that knows.

They live at the top of the repository (alembic/, static/), where `alembic revision` and the
developers find them. server/migrations and server/static are symlinks to them, and pyproject.toml
ships both as package data, so the package finds them at the same place in a checkout, an editable
install and an installed wheel (which holds copies): importlib.resources, relative to `server`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
from importlib.resources import as_file, files
from pathlib import Path

# A directory that as_file had to copy out (a package imported from a zip) lives as long as the
# process: Alembic and StaticFiles read from it long after they are given the path.
_copies = contextlib.ExitStack()
atexit.register(_copies.close)


@functools.cache
def _package_dir(name: str, marker: str) -> Path:
    path = _copies.enter_context(as_file(files("server") / name))
    if not (path / marker).is_file():
        raise RuntimeError(f"{name} not found in the installed package: no {marker} in {path}")
    return path.resolve()


def migrations_dir() -> Path:
    """The Alembic script directory: env.py, script.py.mako, versions/."""
    return _package_dir("migrations", "env.py")


def static_dir() -> Path:
    """The page (index.html) and the widget, served under /static."""
    return _package_dir("static", "index.html")
