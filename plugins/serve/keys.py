"""Tenant API keys: made once, shown once, stored only as a SHA-256 hash.

A key reads `hk_<id>_<secret>`: `id` (12 hex digits) finds the record without
scanning; `secret` is 32 random bytes (256 bits), so a plain SHA-256 of the whole
token is enough (no password-stretching is needed for a high-entropy secret) and the
stored hash is compared with `hmac.compare_digest`. The token itself is never written
anywhere, logged, or kept after `herd keys create` printed it.

Two stores: a JSON file (mode 0600, in the user's data dir) for one host, or Redis
(a hash under `{prefix}:keys`) when replicas on several hosts share the keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelherd.errors import ConfigError
from modelherd.lazy_model import LazyModel
from pydantic import ConfigDict, Field

TOKEN_PREFIX = "hk_"
_TOKEN_RE = re.compile(r"^hk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class KeyRecord(LazyModel):
    """What is stored for one key (never the key itself)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    tenant: str
    sha256: str
    created: float
    expires: float | None = None
    #: aliases this key may call; None = every alias
    models: list[str] | None = None
    revoked: float | None = None
    #: an admin key may use the management routes (/admin/keys), not the model routes
    admin: bool = False
    note: str = ""

    def state(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def public(self) -> dict[str, Any]:
        """The record without its hash (for `herd keys list` and /admin/keys)."""
        return {**self.model_dump(exclude={"sha256"}), "state": self.state()}


class KeyFile(LazyModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    keys: dict[str, KeyRecord] = Field(default_factory=dict)


def new_token() -> tuple[str, str]:
    """(key id, token): the token is shown to the user once and never stored."""
    key_id = secrets.token_hex(6)
    return key_id, f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(token: str) -> str | None:
    """The key id inside a well-formed token, else None."""
    match = _TOKEN_RE.match(token)
    return match.group(1) if match else None


def parse_expiry(value: str | None, now: float | None = None) -> float | None:
    """`30d`, `12h`, `90m`, `2w`, or an ISO date/time (UTC if no offset) -> epoch seconds."""
    if value is None or value == "":
        return None
    now = time.time() if now is None else now
    match = _DURATION_RE.match(value.strip())
    if match:
        return now + float(match.group(1)) * _UNITS[match.group(2)]
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"--expires {value!r} is neither a duration (30d, 12h, 90m, 2w) nor an ISO date "
            f"(2027-01-31 or 2027-01-31T12:00:00+00:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    stamp = when.timestamp()
    if stamp <= now:
        raise ConfigError(f"--expires {value!r} is in the past — give a future date or a duration")
    return stamp


def default_keys_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("modelherd")) / "serve-keys.json"


class FileKeyStore:
    """Keys in one JSON file, mode 0600; re-read when it changes (revocations apply live)."""

    kind = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: int | None = None
        self._data = KeyFile()

    def _read(self) -> KeyFile:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._mtime, self._data = None, KeyFile()
            return self._data
        if stat.st_mtime_ns == self._mtime:
            return self._data
        if stat.st_mode & 0o077:
            raise ConfigError(
                f"{self.path}: the keys file is readable by other users (mode "
                f"{stat.st_mode & 0o777:o}) — run: chmod 600 {self.path}"
            )
        try:
            data = KeyFile.model_validate_json(self.path.read_bytes())
        except ValueError as exc:
            raise ConfigError(
                f"{self.path}: not a valid keys file ({type(exc).__name__}) — restore it "
                f"from a backup, or move it away and create the keys again"
            ) from None
        self._mtime, self._data = stat.st_mtime_ns, data
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[KeyFile]:
        """Read-modify-write under an exclusive lock, then an atomic 0600 replace."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_suffix(".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._mtime = None
            data = self._read().model_copy(deep=True)
            yield data
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            out = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            with os.fdopen(out, "w") as handle:
                handle.write(data.model_dump_json(indent=1))
            os.replace(tmp, self.path)
            self._mtime = None
        finally:
            os.close(fd)

    def get(self, key_id: str) -> KeyRecord | None:
        return self._read().keys.get(key_id)

    def all(self) -> list[KeyRecord]:
        return list(self._read().keys.values())

    def add(self, record: KeyRecord) -> None:
        with self._locked() as data:
            data.keys[record.id] = record

    def revoke(self, key_id: str) -> KeyRecord | None:
        with self._locked() as data:
            record = data.keys.get(key_id)
            if record is not None and record.revoked is None:
                record.revoked = time.time()
            return record

    def describe(self) -> str:
        return str(self.path)


class RedisKeyStore:
    """Keys in a Redis hash `{prefix}:keys` (field = key id, value = the record's JSON).

    Sync methods serve the CLI; `aget` serves the gateway on its event loop.
    """

    kind = "redis"

    def __init__(self, url: str, prefix: str, password: str | None = None) -> None:
        self.url = url
        self.hash_key = f"{prefix}:keys"
        self._password = password
        self._sync: Any = None
        self._async: Any = None

    def _client(self) -> Any:
        if self._sync is None:
            import redis

            self._sync = redis.Redis.from_url(
                self.url, password=self._password, socket_timeout=2.0, decode_responses=True
            )
        return self._sync

    def _aclient(self) -> Any:
        if self._async is None:
            import redis.asyncio as aioredis

            self._async = aioredis.from_url(
                self.url, password=self._password, socket_timeout=1.0, decode_responses=True
            )
        return self._async

    def get(self, key_id: str) -> KeyRecord | None:
        raw = self._client().hget(self.hash_key, key_id)
        return KeyRecord.model_validate_json(raw) if raw else None

    async def aget(self, key_id: str) -> KeyRecord | None:
        raw = await self._aclient().hget(self.hash_key, key_id)
        return KeyRecord.model_validate_json(raw) if raw else None

    def all(self) -> list[KeyRecord]:
        return [KeyRecord.model_validate_json(v) for v in self._client().hvals(self.hash_key)]

    def add(self, record: KeyRecord) -> None:
        self._client().hset(self.hash_key, record.id, record.model_dump_json())

    def revoke(self, key_id: str) -> KeyRecord | None:
        record = self.get(key_id)
        if record is not None and record.revoked is None:
            record.revoked = time.time()
            self.add(record)
        return record

    async def aping(self) -> None:
        await self._aclient().ping()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    def describe(self) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path} ({self.hash_key})"


KeyStore = FileKeyStore | RedisKeyStore


def open_store(settings: Any, env: dict[str, str]) -> KeyStore:
    """The store `[plugins.serve]` names: Redis when redis_url is set, else the file."""
    if settings.redis_url:
        password = None
        if settings.redis_password_env:
            password = env.get(settings.redis_password_env) or os.environ.get(
                settings.redis_password_env
            )
            if not password:
                raise ConfigError(
                    f"[plugins.serve] redis_password_env: ${settings.redis_password_env} is not "
                    f"set — export it, or remove redis_password_env"
                )
        return RedisKeyStore(settings.redis_url, settings.key_prefix, password)
    path = Path(settings.keys_path).expanduser() if settings.keys_path else default_keys_path()
    return FileKeyStore(path)


def dumps_public(records: list[KeyRecord]) -> str:
    return json.dumps([r.public() for r in records], indent=2)
