"""What an operator sees when a setting or the database is wrong: one line naming the setting, the
value (secrets redacted) and the fix, instead of a pydantic dump or a driver's traceback."""

from __future__ import annotations

import difflib
import logging
import os
import socket
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from server.config import Settings
from server.logs import redact, shown_url

log = logging.getLogger("server.config")

# Read by the tests and CI, never by the server: not worth a warning.
IGNORED_PREFIXES = ("CHAT_TEST_",)


class OperatorError(Exception):
    """A mistake the operator can fix; its message is the one line printed (exit status 2)."""


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return str(choices[0])
    return "CHAT_" + field.upper()


def known_names() -> set[str]:
    return {env_name(f) for f in Settings.model_fields}


def _is_secret(field: str) -> bool:
    return "SecretStr" in str(Settings.model_fields[field].annotation)


def _shown(field: str, value: Any) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if _is_secret(field):
        return f"[redacted, {len(str(value))} characters]"
    return repr(redact(str(value)))


def _problem(error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "it must be a whole number"
    if kind in ("float_parsing", "float_type"):
        return "it must be a number"
    if kind in ("bool_parsing", "bool_type"):
        return "it must be true or false"
    if kind == "greater_than_equal":
        return f"it must be at least {ctx.get('ge')}"
    if kind == "greater_than":
        return f"it must be more than {ctx.get('gt')}"
    if kind == "less_than_equal":
        return f"it must be at most {ctx.get('le')}"
    if kind == "literal_error":
        return f"it must be one of {ctx.get('expected')}"
    message = str(error.get("msg", "is not valid"))
    return message.removeprefix("Value error, ")


def describe_validation_error(e: ValidationError) -> list[str]:
    """One line per bad setting, named as the operator wrote it (CHAT_X, not the field)."""
    lines = []
    for error in e.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        if field not in Settings.model_fields:
            lines.append(f"a setting is not valid: {redact(str(error.get('msg')))}")
            continue
        name = env_name(field)
        default = Settings.model_fields[field].default
        source = "" if name in os.environ else " (in ./.env)" if Path(".env").is_file() else ""
        fix = f"; unset it to use the default ({default})" if default not in (None, [], "") else ""
        lines.append(f"{name}={_shown(field, error.get('input'))}{source}: {_problem(error)}{fix}")
    return lines


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        raise OperatorError("\n".join(describe_validation_error(e))) from None


def closest(name: str, known: set[str]) -> str | None:
    expanded = name.replace("_DB_", "_DATABASE_")
    for candidate in (expanded, name):
        match = difflib.get_close_matches(candidate, sorted(known), n=1, cutoff=0.6)
        if match:
            return match[0]
    return None


def _dotenv_names() -> set[str]:
    from dotenv import dotenv_values

    return {k for k in dotenv_values(".env")} if Path(".env").is_file() else set()


def warn_about_settings(settings: Settings) -> None:
    """Mistakes that are not errors: a misspelt CHAT_* name, an origin that can never match."""
    known = known_names()
    names = {k for k in os.environ if k.startswith("CHAT_")} | {k for k in _dotenv_names() if k.startswith("CHAT_")}
    for name in sorted(names - known):
        if name.startswith(IGNORED_PREFIXES):
            continue
        guess = closest(name, known)
        log.warning("%s is not a chat-server setting, so it is ignored%s", name,
                    f"; did you mean {guess}?" if guess else " (see .env.example for the list)")
    for origin in settings.allowed_origins:
        if "://" not in origin:
            log.warning("CHAT_ALLOWED_ORIGINS entry %r has no scheme, so it can never match a browser's Origin; "
                        "write it as https://%s (or http://%s)", origin, origin, origin)


# -- the database ----------------------------------------------------------------------------------
def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend([getattr(e, "orig", None), e.__cause__, e.__context__])
        todo.extend(getattr(e, "exceptions", []) or [])
    return seen


def explain_database_error(exc: BaseException, settings: Settings) -> str | None:
    """The line for a database that cannot be used, or None when `exc` is something else."""
    from sqlalchemy.engine import make_url

    shown = shown_url(settings.database_url)
    url = make_url(settings.database_url)
    where = f"CHAT_DATABASE_URL={shown}"
    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain)

    if settings.is_sqlite:
        path = settings.sqlite_path
        folder = str(path.parent) if path is not None else "."
        folder = folder if folder.startswith(("/", ".")) else "./" + folder
        if any(isinstance(e, PermissionError) for e in chain) or "unable to open database file" in text \
                or "readonly database" in text:
            return f"cannot write {folder} (permission denied); set CHAT_DATABASE_URL to a writable place"
        oserror = next((e for e in chain if isinstance(e, OSError)), None)
        if oserror is not None:
            reason = (oserror.strerror or str(oserror)).lower()
            return f"cannot write {folder} ({reason}); set CHAT_DATABASE_URL to a writable place"
        return None

    host = f"{url.host or 'localhost'}:{url.port or 5432}"
    if "InvalidCatalogNameError" in names:
        user = f" -U {url.username}" if url.username else ""
        return (f"{where}: the database {url.database!r} does not exist on {host}; "
                f"create it with: createdb -h {url.host or 'localhost'} -p {url.port or 5432}{user} {url.database}")
    if names & {"InvalidPasswordError", "InvalidAuthorizationSpecificationError"}:
        return f"{where}: PostgreSQL at {host} refused the login; check the user and password in the URL"
    if any(isinstance(e, socket.gaierror) for e in chain):
        return f"{where}: cannot resolve the host {url.host!r}; check the host name"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text \
            or "Connect call failed" in text:
        return f"{where}: nothing listens at {host} (connection refused); start PostgreSQL or fix the host and port"
    if any(isinstance(e, TimeoutError) for e in chain):
        return (f"{where}: {host} did not answer within {settings.db_connect_timeout_s:g} s; check the host, the "
                "port and any firewall (CHAT_DB_CONNECT_TIMEOUT_S sets the wait)")
    if any(isinstance(e, OSError) for e in chain):
        oserror = next(e for e in chain if isinstance(e, OSError))
        return f"{where}: cannot connect to {host} ({oserror.strerror or oserror}); check the host and port"
    return None
