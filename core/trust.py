"""Which implicitly found files herd may use: `herd trust`, like direnv's `allow`.

A `plugins.toml` or `.env` that herd finds in the working directory belongs to
whoever wrote that directory — a cloned repository, a downloaded archive — not to
the user. Such a file can point a provider's base_url (and with it the user's API
key and prompts) at another host, name any environment variable as a key, or send
traces and alerts anywhere. So herd uses it only after the user has run
`herd trust`, which records the file's resolved path and the SHA-256 of its bytes in
the user's data dir. An edited file has another digest and needs trusting again.

Files named explicitly (`--config PATH`, `$HERD_CONFIG`) and the user's own config
dir are trusted without a record: the user chose them.

The store is `<data dir>/trusted.json` (`$HERD_DATA_DIR`, else the platform's user
data dir), written atomically with mode 0600. A store that another user could have
written (not owned by us, or group/other-writable) is not believed: nothing is
trusted until `herd trust` rewrites it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Verdict = Literal["trusted", "unknown", "changed"]

STORE_NAME = "trusted.json"


def data_dir() -> Path:
    """The user's data dir: `$HERD_DATA_DIR`, else the platform's user data dir."""
    env = os.environ.get("HERD_DATA_DIR")
    if env:
        return Path(os.path.expanduser(env))
    import platformdirs

    return Path(platformdirs.user_data_dir("modelherd"))


def store_path() -> Path:
    return data_dir() / STORE_NAME


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _key(path: Path) -> str:
    # the resolved path: a symlink swapped after trusting points at another record
    return str(path.expanduser().resolve())


@dataclass(frozen=True)
class TrustRecord:
    path: str
    sha256: str
    trusted_at: str


class TrustStore:
    """The records in `<data dir>/trusted.json`; `problem` says why none are believed."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else store_path()
        self.records: dict[str, TrustRecord] = {}
        self.problem = ""
        self._read()

    def _read(self) -> None:
        try:
            info = self.path.lstat()
        except FileNotFoundError:
            return
        except OSError as exc:
            self.problem = f"cannot read {self.path}: {exc.strerror}"
            return
        if not stat.S_ISREG(info.st_mode):
            self.problem = f"{self.path} is not a regular file"
            return
        foreign = hasattr(os, "getuid") and info.st_uid != os.getuid()
        if foreign or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            self.problem = f"{self.path} is writable by another user"
            return
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            files = raw["files"]
            self.records = {
                path: TrustRecord(path, str(entry["sha256"]), str(entry.get("trusted_at", "")))
                for path, entry in files.items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.records = {}
            self.problem = f"{self.path} is not a valid trust store"

    def verdict(self, path: Path, data: bytes) -> Verdict:
        """Whether `data` (the bytes just read from `path`) is what the user trusted."""
        if self.problem:
            return "unknown"
        record = self.records.get(_key(path))
        if record is None:
            return "unknown"
        return "trusted" if record.sha256 == digest(data) else "changed"

    def trust(self, path: Path, data: bytes) -> TrustRecord:
        from datetime import UTC, datetime

        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        record = TrustRecord(_key(path), digest(data), now)
        self.records[record.path] = record
        self.problem = ""
        self._write()
        return record

    def untrust(self, path: Path) -> bool:
        removed = self.records.pop(_key(path), None) is not None
        if removed:
            self._write()
        return removed

    def _write(self) -> None:
        import tempfile  # only `herd trust` writes; keep it off every command's import

        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {
            "version": 1,
            "files": {
                r.path: {"sha256": r.sha256, "trusted_at": r.trusted_at}
                for r in sorted(self.records.values(), key=lambda r: r.path)
            },
        }
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".trusted-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(body, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class Skipped:
    """An implicitly found file herd did not use, and what it used instead."""

    path: Path
    verdict: Verdict
    instead: str
    problem: str = ""

    @property
    def shown(self) -> str:
        return str(self.path) if self.path.is_absolute() else f"./{self.path}"

    def why(self) -> str:
        if self.verdict == "changed":
            return f"{self.shown} changed since you trusted it"
        if self.problem:
            return f"{self.shown} is not trusted ({self.problem})"
        return f"{self.shown} is not trusted"


def skipped_line(skipped: list[Skipped]) -> str:
    """One line for every file skipped by one command (plugins.toml and .env together)."""
    whys = " and ".join(s.why() for s in skipped)
    them = "them" if len(skipped) > 1 else "it"
    instead = " and ".join(dict.fromkeys(s.instead for s in skipped))
    again = " again" if any(s.verdict == "changed" for s in skipped) else ""
    return (
        f"{whys}, so herd ignores {them} and uses {instead} — review {them}, then run "
        f"`herd trust`{again} to use {them} (see docs/security.md)"
    )
