"""The full-text index behind GET /api/search, one per database, kept current by the database
itself inside the statement that stores a message: no second write per turn, no commit of its own.

- PostgreSQL: a GIN index on `to_tsvector('simple', content)`: words lower-cased, no stemming and
  no stop words, so that "every word of q" means every word, in any language.
- SQLite: an FTS5 table over messages' own rows (external content: the text is stored once), kept
  by triggers. It is keyed by the messages table's rowid, which a VACUUM may renumber (the table's
  key is a text id): after a VACUUM, `INSERT INTO messages_fts(messages_fts) VALUES('rebuild')`
  makes it whole again.

Alembic owns these objects (migration 0007); schema.py leaves them out, and the schema comparison
skips them by name (SEARCH_OBJECTS).
"""

from __future__ import annotations

PG_INDEX = "ix_messages_search"
PG_DOCUMENT = "to_tsvector('simple'::regconfig, content)"
SQLITE_TABLE = "messages_fts"

PG_CREATE = [f"CREATE INDEX {PG_INDEX} ON messages USING gin ({PG_DOCUMENT})"]
PG_DROP = [f"DROP INDEX IF EXISTS {PG_INDEX}"]

SQLITE_CREATE = [
    f"CREATE VIRTUAL TABLE {SQLITE_TABLE} USING fts5(content, content='messages', content_rowid='rowid', "
    "tokenize='unicode61 remove_diacritics 0')",
    f"""CREATE TRIGGER {SQLITE_TABLE}_insert AFTER INSERT ON messages BEGIN
          INSERT INTO {SQLITE_TABLE}(rowid, content) VALUES (new.rowid, new.content);
        END""",
    f"""CREATE TRIGGER {SQLITE_TABLE}_delete AFTER DELETE ON messages BEGIN
          INSERT INTO {SQLITE_TABLE}({SQLITE_TABLE}, rowid, content) VALUES ('delete', old.rowid, old.content);
        END""",
    f"""CREATE TRIGGER {SQLITE_TABLE}_update AFTER UPDATE OF content ON messages BEGIN
          INSERT INTO {SQLITE_TABLE}({SQLITE_TABLE}, rowid, content) VALUES ('delete', old.rowid, old.content);
          INSERT INTO {SQLITE_TABLE}(rowid, content) VALUES (new.rowid, new.content);
        END""",
    f"INSERT INTO {SQLITE_TABLE}({SQLITE_TABLE}) VALUES ('rebuild')",  # the messages stored before
]
SQLITE_DROP = [
    *(f"DROP TRIGGER IF EXISTS {SQLITE_TABLE}_{event}" for event in ("insert", "delete", "update")),
    f"DROP TABLE IF EXISTS {SQLITE_TABLE}",
]


def is_search_object(name: str | None) -> bool:
    """Whether a table or index named `name` belongs to the search index (FTS5 makes shadow
    tables messages_fts_data, _idx, _docsize, _config)."""
    return name is not None and (name == PG_INDEX or name == SQLITE_TABLE or name.startswith(SQLITE_TABLE + "_"))
