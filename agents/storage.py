"""Where agents keep what they produce: results (JSON), journals (JSONL), portfolios.

Everything lives under one folder: the agent's `data_dir` setting, else
`$HERD_DATA_DIR`, else `platformdirs.user_data_dir("modelherd")`. Tests point it at
a temporary folder.

On disk (docs/security.md, "Data on disk"): folders herd creates are 0700 and files
0600; a JSON file is replaced atomically (temp file, fsync, rename, fsync of the
folder), so a crash leaves the old or the new file, never half of one; journal lines
are appended with one write and fsynced; a full disk or a refused write is one
`StorageError` line naming the file, never a raw OSError.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelherd.errors import HerdError

FILE_MODE = 0o600
DIR_MODE = 0o700


class StorageError(HerdError):
    """A file under the data dir could not be written; the message says which and why."""


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(os.path.expanduser(str(override)))
    env = os.environ.get("HERD_DATA_DIR")
    if env:
        return Path(os.path.expanduser(env))
    import platformdirs

    return Path(platformdirs.user_data_dir("modelherd"))


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stamp() -> str:
    """A filename-safe UTC timestamp."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def storage_error(path: Path, exc: OSError) -> StorageError:
    """One line for a failed write: what, where, and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on the disk — free some space or set HERD_DATA_DIR to another disk"
    elif exc.errno == errno.EFBIG:
        why = "the file would pass the file-size limit (ulimit -f) — raise it or free space"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = f"{exc.strerror} — check the folder's permissions or set HERD_DATA_DIR"
    else:
        why = f"{exc.strerror or exc} — check the disk and the folder"
    return StorageError(f"cannot write {path}: {why}")


def ensure_dir(path: Path) -> Path:
    """Create `path` and its missing parents as 0700 folders (mkdir's `mode` alone
    applies to the last one only)."""
    missing = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                folder.mkdir(mode=DIR_MODE)
    except OSError as exc:
        raise storage_error(path, exc) from None
    return path


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on a folder
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: Path, data: Any) -> Path:
    """Write atomically and durably: temp file (0600), fsync, rename, fsync the folder."""
    ensure_dir(path.parent)
    text = json.dumps(data, indent=2, default=str) + "\n"
    payload = text.encode("utf-8", "replace")
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise storage_error(path, exc) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def remove_stale_temps(path: Path) -> int:
    """Delete `write_json` temp files of `path` left by a killed process. Call it only
    while holding the lock that guards `path` (a live writer's temp file would go)."""
    removed = 0
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed += 1
    return removed


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `<path>.lock` (flock: released when the process dies, so a
    kill -9 never leaves it held)."""
    ensure_dir(path.parent)
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as exc:
        raise storage_error(lock, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def encode_line(entry: dict[str, Any]) -> bytes:
    """One JSONL line; text that is not valid Unicode (lone surrogates) is replaced."""
    line = json.dumps(entry, default=str, separators=(",", ":"))
    return (line + "\n").encode("utf-8", "replace")


class Journal:
    """An append-only JSONL file: one decision (with its inputs) per line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read_from(self, offset: int) -> bytes:
        try:
            with self.path.open("rb") as fh:
                fh.seek(offset)
                return fh.read()
        except FileNotFoundError:
            return b""

    def repair(self) -> None:
        """Drop a last line cut short by a killed writer (call it under the lock)."""
        if not self.path.is_file():
            return
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise storage_error(self.path, exc) from None
        try:
            _drop_partial_line(fd)
        except OSError as exc:
            raise storage_error(self.path, exc) from None
        finally:
            os.close(fd)

    def append(self, entry: dict[str, Any]) -> None:
        self.append_lines([encode_line({"ts": utc_now(), **entry})])

    def append_lines(self, lines: list[bytes]) -> None:
        """Append whole lines with one write, then fsync. A line cut short by a crash is
        dropped first, so every line in the file parses."""
        if not lines:
            return
        ensure_dir(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise storage_error(self.path, exc) from None
        try:
            _drop_partial_line(fd)
            os.write(fd, b"".join(lines))
            os.fsync(fd)
        except OSError as exc:
            raise storage_error(self.path, exc) from None
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return list(parse_lines(self.path.read_bytes()))


def parse_lines(data: bytes) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL byte string; a line cut short or damaged is skipped."""
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            value = json.loads(raw.decode("utf-8", "replace"))
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value


def _drop_partial_line(fd: int) -> None:
    size = os.fstat(fd).st_size
    if size == 0:
        return
    if os.pread(fd, 1, size - 1) == b"\n":
        return
    # find the last complete line (read backwards in blocks)
    end = size
    while end > 0:
        start = max(0, end - 65536)
        block = os.pread(fd, end - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            os.ftruncate(fd, start + cut + 1)
            return
        end = start
    os.ftruncate(fd, 0)
