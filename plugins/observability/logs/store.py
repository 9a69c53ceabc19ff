"""The call log's SQLite file: open (WAL, mode 0600), append, prune, query.

One writer (the background thread in writer.py) appends; any number of readers
(`herd logs`, `herd usage`) query at the same time, which WAL allows. Rows are
ordered by `id`, which grows with time.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from modelherd.plugins.observability.logs.schema import SchemaError, migrate

#: the columns a call record fills, in the order writer.py builds them
COLUMNS = (
    "ts",
    "outcome",
    "tenant",
    "agent",
    "run_id",
    "alias",
    "provider",
    "model",
    "answered_by",
    "fallback_from",
    "cache_tier",
    "attempts",
    "finish_reason",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "latency_s",
    "cost",
    "currency",
    "saved",
    "price_source",
    "error_type",
    "error",
    "request_id",
    "stream",
)
_INSERT = f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
#: rows per multi-row INSERT: 25 columns x 200 rows stays far below SQLite's limit on
#: bound parameters (32766 since 3.32; 999 before, hence the check in _insert_rows)
_ROWS_PER_INSERT = 200 if sqlite3.sqlite_version_info >= (3, 32) else 999 // len(COLUMNS)
_ROW_PLACEHOLDERS = f"({', '.join('?' * len(COLUMNS))})"


@functools.lru_cache(maxsize=8)
def _insert_rows(count: int) -> str:
    """INSERT of `count` rows at once (the full chunk's text is built once)."""
    return f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES " + ", ".join(
        [_ROW_PLACEHOLDERS] * count
    )


_LIST_COLUMNS = (
    "id, ts, outcome, tenant, agent, run_id, alias, provider, model, answered_by, "
    "fallback_from, cache_tier, input_tokens, output_tokens, latency_s, cost, currency, "
    "saved, error_type"
)
#: the group-by expression per `herd usage --by`; unary + keeps SQLite from walking the
#: alias index for the grouping (a random row lookup per call) instead of the ts range
GROUPS = {
    "model": "+alias",
    "provider": "provider",
    "tenant": "coalesce(tenant, '-')",
    "agent": "coalesce(agent, '-')",
    "day": "strftime('%Y-%m-%d', ts, 'unixepoch')",
}


class LogFileError(Exception):
    """The log file cannot be opened or used; the message says why and what to do."""


#: how long opening a log waits for other processes switching the same new file to WAL
_WAL_SWITCH_WAIT_S = 5.0


def _switch_to_wal(db: sqlite3.Connection) -> None:
    """`PRAGMA journal_mode = WAL`, retried while another process holds the lock.

    SQLite does not run the busy handler for this switch: when processes open one new
    file at once (`herd serve --workers 2`, replicas on one disk) all but the first can
    get "database is locked" at once — about 1 open in 240 with four processes here."""
    deadline = time.monotonic() + _WAL_SWITCH_WAIT_S
    pause = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED")
            if not busy or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def open_db(path: Path, *, create: bool) -> sqlite3.Connection:
    """A connection to the log at `path`, migrated to the current schema."""
    if not path.exists():
        if not create:
            raise LogFileError(
                f"no call log at {path} yet — it is written once a call is made with the "
                f"logs plugin on (see docs/logs.md)"
            )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # created 0600 before SQLite sees it; SQLite gives its -wal/-shm files the
        # database file's mode
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    try:
        db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        if path.stat().st_size == 0:
            # before anything writes the header: switching to WAL writes it, and from
            # then on the auto-vacuum mode is fixed (it stayed "none" when this came later)
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        _switch_to_wal(db)
        db.execute("PRAGMA synchronous = NORMAL")
        # the -wal file is truncated back to this after a checkpoint: the bound on the
        # database holds for what sits beside it too
        db.execute("PRAGMA journal_size_limit = 8388608")
        migrate(db)
    except SchemaError as exc:
        raise LogFileError(f"{path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise LogFileError(
            f"{path}: cannot use it as a call log ({exc}) — move it away or set "
            f"[plugins.logs] path to another file"
        ) from None
    return db


@dataclass(frozen=True, slots=True)
class Filters:
    """What `herd logs` and `herd usage` select."""

    alias: str | None = None
    tenant: str | None = None
    agent: str | None = None
    run_id: str | None = None
    since: float | None = None
    errors: bool = False
    text: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("alias", self.alias),
            ("tenant", self.tenant),
            ("agent", self.agent),
            ("run_id", self.run_id),
        ):
            if value is not None:
                clauses.append(f"calls.{column} = ?")
                args.append(value)
        if self.since is not None:
            clauses.append("calls.ts >= ?")
            args.append(self.since)
        if self.errors:
            clauses.append("calls.outcome = 'error'")
        if self.text:
            # one phrase: the user's quotes and FTS operators stay literal text
            clauses.append("calls.id IN (SELECT rowid FROM content_fts WHERE content_fts MATCH ?)")
            args.append('"' + self.text.replace('"', '""') + '"')
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


class LogStore:
    """One open log file."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self.db = open_db(path, create=create)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()

    # ---- writing (the writer thread only) -------------------------------------

    def append(self, rows: Iterable[tuple[tuple[Any, ...], str | None, str | None]]) -> int:
        """Insert call rows (and their content, when kept) in one transaction."""
        db = self.db
        count = 0
        db.execute("BEGIN")
        try:
            for values, messages, answer in rows:
                cursor = db.execute(_INSERT, values)
                if messages is not None or answer is not None:
                    db.execute(
                        "INSERT INTO content (call_id, messages, answer) VALUES (?, ?, ?)",
                        (cursor.lastrowid, messages, answer),
                    )
                count += 1
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return count

    def append_metadata(self, rows: list[tuple[Any, ...]]) -> int:
        """Insert call rows without content in one transaction, many rows per statement.

        The writer thread needs the GIL between SQLite steps, and each time it takes it
        back from a busy event loop the calls being logged wait: one multi-row INSERT
        per `_ROWS_PER_INSERT` rows is one step (and one hand-over) where `executemany`
        would make one per row.
        """
        db = self.db
        db.execute("BEGIN")
        try:
            for start in range(0, len(rows), _ROWS_PER_INSERT):
                chunk = rows[start : start + _ROWS_PER_INSERT]
                db.execute(_insert_rows(len(chunk)), list(chain.from_iterable(chunk)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(rows)

    def file_pages_bytes(self) -> int:
        """The database's size in pages (free ones included), without a stat call."""
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        return int(self.db.execute("PRAGMA page_count").fetchone()[0] * page_size)

    def used_bytes(self) -> int:
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def prune(self, retention_s: float, max_bytes: int, now: float | None = None) -> int:
        """Delete rows past retention, then the oldest until the file fits `max_bytes`."""
        db = self.db
        cutoff = (now if now is not None else time.time()) - retention_s
        deleted = self._delete_through(
            db.execute("SELECT max(id) FROM calls WHERE ts < ?", (cutoff,)).fetchone()[0]
        )
        # a few rounds: each deletes the share of rows by which the file is too big
        for _ in range(8):
            used = self.used_bytes()
            if used <= max_bytes:
                break
            low, high, rows = db.execute("SELECT min(id), max(id), count(*) FROM calls").fetchone()
            if not rows:
                break
            share = min(1.0, (used - 0.8 * max_bytes) / used)
            boundary = low + max(1, int((high - low + 1) * share)) - 1
            deleted += self._delete_through(boundary)
        if deleted:
            db.execute("PRAGMA incremental_vacuum")
        return deleted

    def _delete_through(self, last_id: int | None) -> int:
        if last_id is None:
            return 0
        db = self.db
        db.execute("BEGIN")
        db.execute("DELETE FROM content WHERE call_id <= ?", (last_id,))
        count = db.execute("DELETE FROM calls WHERE id <= ?", (last_id,)).rowcount
        db.execute("COMMIT")
        return int(count)

    # ---- reading ------------------------------------------------------------

    def query(self, filters: Filters, limit: int = 20) -> list[dict[str, Any]]:
        """The newest `limit` calls matching `filters`, newest first."""
        where, args = filters.where()
        sql = f"SELECT {_LIST_COLUMNS} FROM calls{where} ORDER BY calls.id DESC LIMIT ?"
        return self._dicts(self.db.execute(sql, [*args, limit]))

    def get(self, call_id: int) -> dict[str, Any] | None:
        rows = self._dicts(
            self.db.execute(
                "SELECT calls.*, content.messages, content.answer FROM calls "
                "LEFT JOIN content ON content.call_id = calls.id WHERE calls.id = ?",
                (call_id,),
            )
        )
        if not rows:
            return None
        row = rows[0]
        if row.get("messages"):
            row["messages"] = json.loads(row["messages"])
        return row

    def usage(self, group: str, filters: Filters) -> list[dict[str, Any]]:
        """Calls, tokens, cost, savings, error rate and p50/p95 latency per group."""
        key = GROUPS[group]
        where, args = filters.where()
        sql = (
            f"SELECT {key} AS k, count(*), sum(input_tokens), sum(output_tokens), "
            f"sum(cost), sum(saved), sum(outcome = 'error'), sum(cache_tier IS NOT NULL), "
            f"sum(cost IS NULL AND outcome = 'ok'), max(currency) "
            f"FROM calls{where} GROUP BY k ORDER BY k"
        )
        out: list[dict[str, Any]] = []
        for k, calls, tin, tout, cost, saved, errors, hits, unpriced, cur in self.db.execute(
            sql, args
        ):
            out.append(
                {
                    group: k,
                    "calls": calls,
                    "input_tokens": tin or 0,
                    "output_tokens": tout or 0,
                    "cost": round(cost or 0.0, 9),
                    "currency": cur or "USD",
                    "unpriced_calls": unpriced or 0,
                    "cache_hits": hits or 0,
                    "cache_saved": round(saved or 0.0, 9),
                    "errors": errors or 0,
                    "error_rate": (errors or 0) / calls if calls else 0.0,
                }
            )
        percentiles = self._percentiles(key, where, args)
        for row in out:
            ranks = percentiles.get(row[group], {})
            row["p50_s"] = ranks.get("p50_s")
            row["p95_s"] = ranks.get("p95_s")
        return out

    def _percentiles(self, key: str, where: str, args: list[Any]) -> dict[Any, dict[str, float]]:
        """p50 and p95 latency per group (nearest rank). The rows come back unsorted and
        are sorted per group in Python: faster here than SQLite's ORDER BY or a window
        function over the same rows (bench/logs.py)."""
        extra = " AND " if where else " WHERE "
        sql = f"SELECT {key}, latency_s FROM calls{where}{extra}latency_s IS NOT NULL"
        groups: dict[Any, list[float]] = {}
        for k, latency in self.db.execute(sql, args):
            groups.setdefault(k, []).append(latency)
        found: dict[Any, dict[str, float]] = {}
        for k, values in groups.items():
            values.sort()
            n = len(values)
            found[k] = {
                "p50_s": round(values[(50 * n + 99) // 100 - 1], 6),
                "p95_s": round(values[(95 * n + 99) // 100 - 1], 6),
            }
        return found

    @staticmethod
    def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
