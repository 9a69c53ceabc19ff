"""The call log's SQLite schema, its version, and the migrations between versions.

`PRAGMA user_version` holds the schema version. Opening a file runs every migration
after its version, in one transaction each; a file from a newer modelherd is refused
(never rewritten). The DDL of every past version stays here so a migration can be
tested from a real older file.
"""

from __future__ import annotations

import sqlite3

VERSION = 2

#: version 1 (modelherd 0.1 previews): metadata only, no cost, no run id, no content
V1 = """
CREATE TABLE calls (
  id INTEGER PRIMARY KEY,
  ts REAL NOT NULL,
  outcome TEXT NOT NULL,
  tenant TEXT, agent TEXT,
  alias TEXT, provider TEXT, model TEXT, answered_by TEXT, fallback_from TEXT,
  cache_tier TEXT, attempts INTEGER, finish_reason TEXT,
  input_tokens INTEGER, output_tokens INTEGER,
  latency_s REAL, error_type TEXT, error TEXT, request_id TEXT
);
CREATE INDEX calls_ts ON calls(ts);
"""

#: version 1 -> 2: cost, cache-read tokens, run id, stream flag; content + FTS5; indexes
V1_TO_V2 = """
ALTER TABLE calls ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN cost REAL;
ALTER TABLE calls ADD COLUMN currency TEXT;
ALTER TABLE calls ADD COLUMN saved REAL NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN price_source TEXT;
ALTER TABLE calls ADD COLUMN run_id TEXT;
ALTER TABLE calls ADD COLUMN stream INTEGER NOT NULL DEFAULT 0;
-- one column each: an index entry ends with the rowid, so "WHERE alias = ? ORDER BY id
-- DESC LIMIT 20" walks the index backwards and stops after 20 rows, with no sort
CREATE INDEX calls_alias ON calls(alias);
CREATE INDEX calls_tenant ON calls(tenant);
CREATE INDEX calls_agent ON calls(agent);
CREATE INDEX calls_errors ON calls(outcome) WHERE outcome = 'error';
CREATE INDEX calls_run ON calls(run_id) WHERE run_id IS NOT NULL;
CREATE TABLE content (call_id INTEGER PRIMARY KEY, messages TEXT, answer TEXT);
CREATE VIRTUAL TABLE content_fts USING fts5(
  messages, answer, content='content', content_rowid='call_id'
);
CREATE TRIGGER content_ai AFTER INSERT ON content BEGIN
  INSERT INTO content_fts(rowid, messages, answer) VALUES (new.call_id, new.messages, new.answer);
END;
CREATE TRIGGER content_ad AFTER DELETE ON content BEGIN
  INSERT INTO content_fts(content_fts, rowid, messages, answer)
  VALUES ('delete', old.call_id, old.messages, old.answer);
END;
"""

MIGRATIONS: dict[int, str] = {1: V1_TO_V2}


class SchemaError(Exception):
    """The file is not a call log this version can use; the message says why."""


def migrate(db: sqlite3.Connection) -> int:
    """Bring `db` to VERSION; return the version it had (0 for a new file)."""
    found = _version(db)
    if found == VERSION:  # the common case: no write lock, so a reader needs no write access
        return found
    # The write lock is taken before the version is read again: two processes opening
    # a new file at once (`herd serve --workers 2`, replicas on one disk) would otherwise
    # both see version 0 and the second would fail on "table calls already exists".
    db.execute("BEGIN IMMEDIATE")
    try:
        found = _version(db)
        if found == 0:
            tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()
            if tables[0]:
                raise SchemaError("it is an SQLite file but not a modelherd call log")
            # incremental auto-vacuum lets pruning give pages back to the filesystem; it
            # can only be chosen before the first table exists
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            _run(db, V1)
        for version in range(max(found, 1), VERSION):
            _run(db, MIGRATIONS[version])
        db.execute(f"PRAGMA user_version = {max(found, VERSION)}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return found


def _version(db: sqlite3.Connection) -> int:
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > VERSION:
        raise SchemaError(
            f"it has schema version {found}, newer than this modelherd's {VERSION} — "
            f"upgrade modelherd, or point [plugins.logs] path at another file"
        )
    return found


def _run(db: sqlite3.Connection, script: str) -> None:
    """Each statement of `script` inside the caller's transaction (`executescript`
    would commit it first and give the lock away)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        if not statement and line.lstrip().startswith("--"):
            continue
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise SchemaError(f"an incomplete statement in the schema: {statement[:60]!r}")
