"""A turn's statements on SQLite, run on the sqlite3 driver directly.

Through SQLAlchemy each statement pays for an execution context, parameter construction, a
result object and its row processors: measured with py-spy under load, a third of the writer
thread's time, on the thread that SQLite's single writer makes the bottleneck (docs/benchmarks.md).
Here each statement is compiled once (by SQLAlchemy, from the one definition in store.py) to
SQLite's SQL, and run with its parameters in order; driver errors come back as SQLAlchemy's, so
that callers see one kind of IntegrityError on both paths.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError


class _Prepared:
    __slots__ = ("sql", "names", "defaults", "processors")

    def __init__(self, statement: Any, conn: Connection, keys: list[str]):
        compiled = statement.compile(dialect=conn.dialect, column_keys=keys)
        self.sql = str(compiled)
        self.names = tuple(compiled.positiontup or ())
        self.defaults = compiled.params  # the statement's own literals (the `+ 1` of last_seq)
        self.processors = dict(compiled._bind_processors)  # datetimes as SQLAlchemy stores them

    def args(self, params: dict[str, Any]) -> list[Any]:
        out = []
        for name in self.names:
            value = params[name] if name in params else self.defaults[name]
            processor = self.processors.get(name)
            out.append(value if processor is None or value is None else processor(value))
        return out


_prepared: dict[tuple[int, tuple[str, ...]], _Prepared] = {}


def run(conn: Connection, statement: Any, params: dict[str, Any]) -> list[Any]:
    """Execute `statement` (a module-level one of store.py: it is cached by identity) with
    `params` in the connection's transaction; its rows."""
    keys = tuple(params)
    prepared = _prepared.get((id(statement), keys))
    if prepared is None:
        prepared = _prepared[(id(statement), keys)] = _Prepared(statement, conn, list(keys))
    args = prepared.args(params)
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(prepared.sql, args)
        return list(cursor.fetchall()) if cursor.description else []
    except conn.dialect.loaded_dbapi.Error as e:
        raise DBAPIError.instance(prepared.sql, args, e, conn.dialect.loaded_dbapi.Error) from e
    finally:
        cursor.close()
