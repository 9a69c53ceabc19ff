"""The disk tier itself: SQLite in WAL mode, the write-behind writer, eviction and
the corrupt-file handling (disk.py, the thin entry, says how it behaves).

Imported when a `[plugins.cache_disk]` table turns the tier on, not by every start
(sqlite3 and these classes cost ~7 M instructions).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from modelherd.cache import CacheTier, TierCounters
from modelherd.plugins.cache.codec import (
    CorruptEntryError,
    FernetSeal,
    Seal,
    decode,
    encode,
)
from modelherd.plugins.cache.disk import DiskSettings, default_path
from modelherd.types import ChatResponse

log = logging.getLogger("modelherd.cache.disk")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires REAL,
    accessed REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_accessed ON entries(accessed);
"""
#: pending access times are written once this many hits have piled up
_TOUCH_FLUSH = 256
#: eviction brings the database down to this share of the cap (room for new stores)
_LOW_WATER = 0.9
_INSERT = (
    "INSERT OR REPLACE INTO entries (key, value, expires, accessed, size) VALUES (?, ?, ?, ?, ?)"
)
#: how long the writer lets answers gather before it commits them (group commit)
_GROUP_COMMIT_S = 0.05
#: a batch this big is committed at once
_GROUP_MAX = 256
#: the most bytes of answers the write-behind buffer holds before a store waits
_PENDING_MAX_BYTES = 64 * 1024**2


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    # only SQLite's own verdict counts: locked / full / I/O errors are transient, and a
    # connection closed under us (ProgrammingError) must not move a fresh file aside
    name = getattr(exc, "sqlite_errorname", None) or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


@dataclass(slots=True, frozen=True)
class _Pending:
    """One sealed answer waiting for the writer."""

    blob: bytes
    expires: float | None
    stored_at: float


#: tiers with a writer: interpreter exit writes what they still hold
_LIVE: weakref.WeakSet[DiskTier] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    # a script that never closes its herd used to have every answer on disk when
    # chat() returned; write-behind keeps that promise at exit
    for tier in list(_LIVE):
        with contextlib.suppress(Exception):
            tier._stop_writer()
            tier._drain()


def _for_want_of_room(exc: sqlite3.DatabaseError) -> bool:
    # a full disk or the file-size limit (EFBIG shows as an I/O error)
    name = getattr(exc, "sqlite_errorname", None) or ""
    return name.startswith(("SQLITE_FULL", "SQLITE_IOERR"))


class DiskTier(CacheTier):
    name = "disk"
    order = 20

    def __init__(self, settings: DiskSettings, seal: Seal) -> None:
        super().__init__()
        self.settings = settings
        self.path = Path(os.path.expanduser(settings.path)) if settings.path else default_path()
        self._seal = seal
        self._write_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._touched: dict[str, float] = {}
        self._warned: set[str] = set()
        self._disabled = False
        # the write-behind buffer: key -> sealed answer, until committed (guarded by
        # _pending_lock; the writer thread waits on _wake)
        self._pending: dict[str, _Pending] = {}
        self._pending_bytes = 0
        self._pending_lock = threading.Lock()
        self._wake = threading.Condition(self._pending_lock)
        self._writer_thread: threading.Thread | None = None
        self._stopping = False
        #: the loop the last store came from: batch results are counted there
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open()
        _LIVE.add(self)

    # ---- connections -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.settings.busy_timeout_ms / 1000,
            isolation_level=None,  # autocommit; batches use explicit BEGIN
            check_same_thread=False,  # the writer lives in worker threads, one at a time
        )
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _open(self) -> None:
        # runs at start, before the tier is wired to the herd: counters only, no metrics
        errors_before = len(self._warned)
        self._open_inner()
        self.counters.errors += len(self._warned) - errors_before

    def _open_inner(self) -> None:
        try:
            self._open_once()
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                self._step_aside(exc)
                return
            self._move_aside(exc)
            try:
                self._open_once()
            except (sqlite3.Error, OSError) as exc2:
                self._step_aside(exc2)
        except OSError as exc:
            self._step_aside(exc)

    def _make_private(self) -> None:
        """The file holds prompts' answers: 0600 in a folder we create 0700. SQLite
        gives its -wal and -shm files the database file's mode, so creating that file
        first (or tightening ours) covers all three."""
        folder = self.path.parent
        if not folder.exists():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            info = os.fstat(fd)
            if info.st_mode & 0o077 and info.st_uid == os.getuid():
                os.fchmod(fd, 0o600)  # written by an older version as 0644
        finally:
            os.close(fd)
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            with contextlib.suppress(OSError):
                if side.stat().st_mode & 0o077 and side.stat().st_uid == os.getuid():
                    side.chmod(0o600)

    def _open_once(self) -> None:
        self._close_connections()
        self._make_private()
        writer = self._connect()
        try:
            writer.execute("PRAGMA journal_mode=WAL")
            # the WAL is truncated back to this after each checkpoint: it counts on disk too
            limit = min(self.settings.max_bytes // 4, 64 * 1024**2)
            writer.execute(f"PRAGMA journal_size_limit={int(limit)}")
            writer.executescript(_SCHEMA)
            # touch the table once so a damaged file shows itself now, not mid-call
            writer.execute("SELECT count(*) FROM entries").fetchone()
        except BaseException:
            writer.close()
            raise
        self._writer = writer
        self._reader = self._connect()
        self._disabled = False

    def _close_connections(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._reader = self._writer = None

    def _warn_once(self, what: str, message: str, *args: Any) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message, *args)

    def _step_aside(self, exc: BaseException) -> None:
        self._close_connections()
        self._disabled = True
        self._warn_once(
            "open",
            "disk cache %s cannot be used (%s); it steps aside and calls go on "
            "without it — check the path and its permissions",
            self.path,
            exc,
        )

    def _move_aside(self, exc: BaseException) -> None:
        """A damaged file is kept for inspection, never deleted; a fresh one replaces it."""
        self._close_connections()
        target = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        self._warn_once(
            "corrupt",
            "disk cache %s is damaged (%s); moved it to %s and started a fresh "
            "one — the calls go on",
            self.path,
            exc,
            target,
        )
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                try:
                    src.replace(Path(f"{target}{suffix}"))
                except OSError:
                    src.unlink(missing_ok=True)

    def _reset(self, exc: sqlite3.DatabaseError) -> None:
        with self._write_lock:
            self._move_aside(exc)
            try:
                self._open_once()
            except (sqlite3.Error, OSError) as exc2:
                self._step_aside(exc2)

    # ---- reads -------------------------------------------------------------------

    async def get(self, key: str) -> ChatResponse | None:
        response, _expires = await self._read(key)
        return response

    async def get_with_ttl(self, key: str) -> tuple[ChatResponse | None, float | None]:
        response, expires = await self._read(key)
        return response, (expires - time.time() if expires is not None else None)

    async def _read(self, key: str) -> tuple[ChatResponse | None, float | None]:
        pending = self._pending.get(key) if self._pending else None
        if pending is not None:
            return self._read_pending(key, pending)
        reader = self._reader
        if reader is None:
            return None, None
        try:
            row = reader.execute(
                "SELECT value, expires FROM entries WHERE key = ?", (key,)
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            self.count("errors")
            if _is_corruption(exc):
                await anyio.to_thread.run_sync(self._reset, exc)
            else:
                self._warn_once(
                    "read", "disk cache %s could not be read (%s); a miss", self.path, exc
                )
            return None, None
        if row is None:
            return None, None
        now = time.time()
        if row[1] is not None and row[1] <= now:
            return None, None  # expired; eviction removes it later
        try:
            response = decode(key, row[0], self._seal)
        except CorruptEntryError as exc:
            self.count("errors")
            self._warn_once(
                "entry",
                "disk cache %s: an entry cannot be trusted (%s); treated as a miss and removed",
                self.path,
                exc,
            )
            await anyio.to_thread.run_sync(self._delete, key)
            return None, None
        self._touched[key] = now
        if len(self._touched) >= _TOUCH_FLUSH:
            await anyio.to_thread.run_sync(self._flush_touches_locked)
        return response, row[1]

    def _read_pending(
        self, key: str, pending: _Pending
    ) -> tuple[ChatResponse | None, float | None]:
        """A hit on an answer the writer has not committed yet: the same bytes a read
        from the file would give back, checked the same way."""
        now = time.time()
        if pending.expires is not None and pending.expires <= now:
            return None, None
        try:
            response = decode(key, pending.blob, self._seal)
        except CorruptEntryError:  # our own bytes: cannot happen short of a bug
            self.count("errors")
            return None, None
        self._touched[key] = now
        return response, pending.expires

    # ---- writes (write-behind: the writer thread) --------------------------------------

    async def set(self, key: str, response: ChatResponse, ttl: float | None) -> None:
        if self._writer is None:
            return
        now = time.time()
        if ttl is None:  # the tier's own TTL; 0 there means "until evicted"
            expires = now + self.settings.ttl if self.settings.ttl > 0 else None
        elif ttl <= 0:  # a call that asked for cache_ttl=0 wants nothing kept
            return
        else:
            expires = now + ttl
        # sealed now: what is stored is the answer as it was returned
        blob = encode(key, response, self._seal)
        if len(blob) > self.settings.max_bytes:
            return
        self._loop = asyncio.get_running_loop()
        entry = _Pending(blob, expires, now)
        limit = self.settings.write_behind_max
        with self._pending_lock:
            old = self._pending.get(key)
            if old is not None:
                self._pending_bytes -= len(old.blob)
            self._pending[key] = entry
            self._pending_bytes += len(blob)
            count = len(self._pending)
            full = count > limit or self._pending_bytes > _PENDING_MAX_BYTES
            if not full:
                if self._writer_thread is None:
                    self._start_writer()
                if count == 1 or count == _GROUP_MAX:
                    # the writer waits for a first answer, then for a batch: wake it
                    # only then, not once per store
                    self._wake.notify()
        if full:
            # the writer is behind (or write-behind is off): this call waits for the disk
            # rather than the buffer growing without bound
            await self.flush()

    async def flush(self) -> None:
        """Write every answer pending now; returns once they are committed (or failed)."""
        if self._pending:
            await anyio.to_thread.run_sync(self._drain)
        else:
            # the writer counts a batch (call_soon_threadsafe) before it leaves the
            # buffer: one turn of the loop and those counts are in
            await asyncio.sleep(0)

    def _start_writer(self) -> None:
        # under _pending_lock
        self._stopping = False
        thread = threading.Thread(
            target=self._writer_main, name=f"herd-cache-disk-writer:{self.path.name}", daemon=True
        )
        self._writer_thread = thread
        thread.start()

    def _writer_main(self) -> None:
        while True:
            with self._pending_lock:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                # group commit: the answers finishing in the next moment join this
                # batch (a commit and a wake-up per batch, not per answer)
                deadline = time.monotonic() + _GROUP_COMMIT_S
                while not self._stopping and len(self._pending) < _GROUP_MAX:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
                if self._stopping:
                    return  # whoever stopped the writer drains what is left
            try:
                self._drain()
            except Exception as exc:  # a bug, not a disk fault (those are handled)
                # the writer must outlive it: a dead writer would leave every later
                # store waiting on a full buffer
                self.counters.errors += 1
                self._warn_once(
                    "writer",
                    "disk cache %s: the writer hit %s (%s); it goes on",
                    self.path,
                    type(exc).__name__,
                    exc,
                )
                time.sleep(0.1)  # no busy loop if it keeps happening

    def _stop_writer(self) -> None:
        with self._pending_lock:
            thread, self._writer_thread = self._writer_thread, None
            self._stopping = True
            self._wake.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        _LIVE.discard(self)

    def _drain(self) -> None:
        """Commit what is pending, batch after batch, until nothing is (any thread)."""
        while self._pending:
            with self._write_lock:
                with self._pending_lock:
                    batch = list(self._pending.items())
                if not batch:
                    return
                # counted before the entries leave the buffer: whoever sees the buffer
                # empty (flush) finds the counters scheduled ahead of it on the loop
                self._account_soon(self._write_batch(batch))
                with self._pending_lock:
                    for key, entry in batch:
                        # a newer answer stored for the key meanwhile stays pending
                        if self._pending.get(key) is entry:
                            del self._pending[key]
                            self._pending_bytes -= len(entry.blob)

    def _account_soon(self, result: TierCounters) -> None:
        """Count a batch on the loop of the stores (the tier's metrics are emitted from
        there); with that loop gone, only the counters move."""
        loop = self._loop
        if loop is not None:
            try:
                if loop is asyncio.get_running_loop():
                    self._account(result)
                    return
            except RuntimeError:
                pass  # not on a loop: the writer thread
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._account, result)
                return
        self._account(result, emit=False)

    def _account(self, result: TierCounters, emit: bool = True) -> None:
        """Add a batch's counts (stores, bytes, evictions, errors) to the tier's."""
        for event, value in result.as_dict().items():
            if value:
                if emit:
                    self.count(event, value)
                else:
                    setattr(self.counters, event, getattr(self.counters, event) + value)

    def _write_batch(self, batch: list[tuple[str, _Pending]]) -> TierCounters:
        """Commit the batch, then evict; under _write_lock.

        One transaction for the lot (one WAL commit instead of one per answer). If it
        fails for want of room, the answers go one at a time, as stores did before
        batching: each that fits is kept, and each failure makes room for the next.
        Any other failure (a lock held past busy_timeout_ms) loses the batch."""
        result = TierCounters()
        writer = self._writer
        if writer is None:
            return result
        rows = [(k, e.blob, e.expires, e.stored_at, len(e.blob)) for k, e in batch]
        try:
            writer.execute("BEGIN IMMEDIATE")
            try:
                self._flush_touches(writer)
                writer.executemany(_INSERT, rows)
                writer.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    writer.execute("ROLLBACK")
                raise
            result.stores, result.bytes = len(rows), sum(row[4] for row in rows)
        except sqlite3.DatabaseError as exc:
            replaced = self._write_failed(writer, exc, result)
            if replaced or len(rows) == 1 or not _for_want_of_room(exc):
                result.errors += len(rows)
                return result
            for row in rows:
                try:
                    writer.execute(_INSERT, row)
                except sqlite3.DatabaseError as exc_one:
                    result.errors += 1
                    if self._write_failed(writer, exc_one, result):
                        return result
                    continue
                result.stores += 1
                result.bytes += row[4]
        try:
            result.evictions += self._evict(writer, time.time())
        except sqlite3.DatabaseError as exc:
            result.errors += 1  # no answer lost: the commit is done
            self._write_failed(writer, exc, result)
        return result

    def _write_failed(
        self, writer: sqlite3.Connection, exc: sqlite3.DatabaseError, result: TierCounters
    ) -> bool:
        """Handle a failed write; True when the file was replaced (nothing more to try)."""
        if _is_corruption(exc):
            self._move_aside(exc)
            try:
                self._open_once()
            except (sqlite3.Error, OSError) as exc2:
                self._step_aside(exc2)
            return True
        # full disk, file-size limit, I/O error, lock held too long: skip this store
        self._warn_once(
            "write",
            "disk cache %s could not store an answer (%s); calls go on "
            "uncached until there is room — free disk space or lower max_bytes",
            self.path,
            exc,
        )
        if _for_want_of_room(exc):
            # make room for the next stores: shrink the WAL, drop the oldest quarter
            with contextlib.suppress(sqlite3.Error):
                writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            result.evictions += self._drop_oldest(writer, fraction=0.25)
        return False

    def _used_bytes(self, writer: sqlite3.Connection) -> int:
        page_size = writer.execute("PRAGMA page_size").fetchone()[0]
        pages = writer.execute("PRAGMA page_count").fetchone()[0]
        free = writer.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def _evict(self, writer: sqlite3.Connection, now: float) -> int:
        cap = self.settings.max_bytes
        if self._used_bytes(writer) <= cap:
            return 0
        evicted = writer.execute(
            "DELETE FROM entries WHERE expires IS NOT NULL AND expires <= ?", (now,)
        ).rowcount
        while self._used_bytes(writer) > cap * _LOW_WATER:
            dropped = self._drop_oldest(writer, fraction=0.1)
            if dropped == 0:
                break
            evicted += dropped
        return max(evicted, 0)

    def _drop_oldest(self, writer: sqlite3.Connection, fraction: float) -> int:
        try:
            total = writer.execute("SELECT count(*) FROM entries").fetchone()[0]
            if not total:
                return 0
            return max(
                writer.execute(
                    "DELETE FROM entries WHERE key IN "
                    "(SELECT key FROM entries ORDER BY accessed LIMIT ?)",
                    (max(1, int(total * fraction)),),
                ).rowcount,
                0,
            )
        except sqlite3.Error:
            return 0

    def _flush_touches(self, writer: sqlite3.Connection) -> None:
        if not self._touched:
            return
        touched, self._touched = self._touched, {}
        # the event loop may still be adding to the old dict (it read the attribute
        # just before the swap): copy it in one step (atomic under the GIL) rather than
        # iterate a dict that can change size; a time added after the copy is a lost
        # hint for eviction, nothing more
        rows = [(when, key) for key, when in touched.copy().items()]
        writer.executemany("UPDATE entries SET accessed = ? WHERE key = ?", rows)

    def _flush_touches_locked(self) -> None:
        with self._write_lock:
            if self._writer is not None:
                # access times are a hint for eviction; losing some is harmless
                with contextlib.suppress(sqlite3.Error):
                    self._flush_touches(self._writer)

    def _delete(self, key: str) -> None:
        with self._write_lock:
            if self._writer is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._writer.execute("DELETE FROM entries WHERE key = ?", (key,))

    # ---- admin -------------------------------------------------------------------

    async def clear(self) -> int:
        def run() -> int:
            with self._write_lock:
                with self._pending_lock:
                    dropped = len(self._pending)
                    self._pending.clear()
                    self._pending_bytes = 0
                if self._writer is None:
                    return dropped
                self._touched.clear()
                return max(self._writer.execute("DELETE FROM entries").rowcount, 0) + dropped

        return await anyio.to_thread.run_sync(run)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.counters.as_dict(),
            "path": str(self.path),
            "max_bytes": self.settings.max_bytes,
            "ttl_s": self.settings.ttl,
            "encrypted": isinstance(self._seal, FernetSeal),
            # answers the writer thread has not committed yet (write-behind)
            "pending": len(self._pending),
        }
        if self._reader is None:
            out["state"] = "stepped aside"
            return out
        try:
            row = self._reader.execute(
                "SELECT count(*), coalesce(sum(size), 0), min(accessed), max(accessed), "
                "min(expires), max(expires) FROM entries"
            ).fetchone()
            entries, size, used_oldest, used_newest, expires_next, expires_last = row
            # what the file holds is the same from every process (unlike the counters)
            out.update(
                entries=entries,
                size_bytes=size,
                file_bytes=self._file_bytes(),
                last_used_oldest=used_oldest,
                last_used_newest=used_newest,
                expires_next=expires_next,
                expires_last=expires_last,
            )
        except sqlite3.Error as exc:
            out["state"] = f"unreadable: {exc}"
        return out

    def _file_bytes(self) -> int:
        return sum(
            Path(f"{self.path}{s}").stat().st_size
            for s in ("", "-wal")
            if Path(f"{self.path}{s}").exists()
        )

    async def aclose(self) -> None:
        def run() -> None:
            self._stop_writer()
            self._drain()  # what the writer had not reached yet
            with self._write_lock:
                if self._writer is not None:
                    with contextlib.suppress(sqlite3.Error):
                        self._flush_touches(self._writer)
                self._close_connections()

        await anyio.to_thread.run_sync(run)
