"""Forged cache entries are misses, never answers (issue 12 §3).

Someone who can write to the Redis server or to the cache's SQLite file, but does not
hold this user's signing key, planted `BUY 0.99` and it was served as the model's
answer: entries carried only a checksum anyone can compute. Now every entry is signed
(HMAC-SHA256, key in the user data dir) or encrypted (Fernet), and checked on read.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from cache_redis_server import RedisServer
from modelherd.cache import request_key
from modelherd.errors import ConfigError
from modelherd.kernel import Herd
from modelherd.plugins.cache import codec
from modelherd.plugins.cache import disk as cache_disk
from modelherd.plugins.cache import memory as cache_memory
from modelherd.plugins.cache import redis as cache_redis
from modelherd.testing import MockModel, make_herd

FERNET_KEY = "T1mM0fQm2yXH3Rzw3b1bSg8u8Qv5m7P9l8b7v2n4k1c="
PROMPT = "BTC at 97k, RSI 71. BUY, SELL or NOTHING?"


def herd_with(
    tables: dict[str, Any], answer: str = "NOTHING", env: dict[str, str] | None = None
) -> tuple[Herd, MockModel]:
    model = MockModel(default=answer)
    herd = make_herd(
        {"mock": model},
        config={"plugins": {"cache_memory": {"enabled": False}, **tables}},
        plugins=(cache_memory, cache_disk, cache_redis),
    )
    herd.env = env or {}
    return herd, model


def key_of(herd: Herd, prompt: str = PROMPT) -> str:
    return request_key(herd.build_request("mock", prompt))


def forged_body(key: str, content: str = "BUY 0.99") -> bytes:
    """What an attacker can write: the entry layout is public, the key is not."""
    response = {"content": content, "model": "mock-model", "provider": "mock"}
    return json.dumps({"k": key, "r": response}, separators=(",", ":")).encode()


def forgeries(key: str) -> dict[str, bytes]:
    body = forged_body(key)
    return {
        # the old format: a checksum anyone can compute
        "unsigned (old format)": b"H1" + hashlib.blake2b(body, digest_size=16).digest() + body,
        # today's format, signed with a key the attacker guessed
        "signed with a guessed key": b"H2" + hmac.digest(b"\0" * 32, body, "sha256") + body,
        "signed with no key": b"H2" + hmac.digest(b"", body, "sha256") + body,
        "garbage": os.urandom(64),
    }


def ask(herd: Herd, prompt: str = PROMPT) -> tuple[str, str | None]:
    async def go() -> tuple[str, str | None]:
        async with herd:
            response = await herd.chat("mock", prompt)
            return response.content, response.cache_tier

    return asyncio.run(go())


# ---- Redis -----------------------------------------------------------------------------


def redis_tables(server: RedisServer, **extra: Any) -> dict[str, Any]:
    return {"cache_redis": {"url": server.url, "op_timeout": 0.5, **extra}}


@pytest.mark.redis
@pytest.mark.parametrize(
    "kind", ["unsigned (old format)", "signed with a guessed key", "signed with no key", "garbage"]
)
def test_an_entry_planted_in_redis_is_a_miss(
    redis_server: RedisServer, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis as redis_sync

    herd, model = herd_with(redis_tables(redis_server))
    full = cache_redis.CACHE_PREFIX + key_of(herd)
    client = redis_sync.Redis.from_url(redis_server.url)
    client.set(full, forgeries(key_of(herd))[kind])
    with caplog.at_level(logging.WARNING, logger="modelherd.cache.redis"):
        assert ask(herd) == ("NOTHING", None)  # before the fix: ("BUY 0.99", "redis")
    assert len(model.history) == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "an entry cannot be trusted" in warnings[0]
    # the model's own answer replaced the forgery, signed, and it is served next time
    stored = client.get(full)
    assert stored is not None and stored.startswith(b"H2") and b"NOTHING" in stored
    herd2, model2 = herd_with(redis_tables(redis_server), answer="never asked")
    assert ask(herd2) == ("NOTHING", "redis") and not model2.history
    client.close()


@pytest.mark.redis
def test_another_users_entries_are_misses_unless_they_share_a_sign_key(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, _ = herd_with(redis_tables(redis_server), answer="from the writer")
    assert ask(writer) == ("from the writer", None)
    # another user (or host): another data dir, another key — a miss, never an answer
    monkeypatch.setenv("HERD_DATA_DIR", str(tmp_path / "other-user"))
    reader, _ = herd_with(redis_tables(redis_server), answer="the reader's own")
    assert ask(reader) == ("the reader's own", None)
    # hosts meant to share one cache name the same key: then they read each other's
    shared = {"HERD_SIGN_KEY": "k" * 48}
    tables = redis_tables(redis_server, sign_key_env="HERD_SIGN_KEY", prefix="herd:shared:")
    host_a, _ = herd_with(tables, answer="host a", env=shared)
    assert ask(host_a) == ("host a", None)
    monkeypatch.setenv("HERD_DATA_DIR", str(tmp_path / "third-user"))
    host_b, model_b = herd_with(tables, answer="host b", env=shared)
    assert ask(host_b) == ("host a", "redis") and not model_b.history


@pytest.mark.redis
def test_with_encryption_on_even_a_correctly_signed_entry_is_refused(
    redis_server: RedisServer,
) -> None:
    import redis as redis_sync

    tables = redis_tables(redis_server, encrypt_key_env="HERD_CACHE_KEY")
    herd, _ = herd_with(tables, env={"HERD_CACHE_KEY": FERNET_KEY})
    key = key_of(herd)
    # an insider with this user's signing key but not the encryption key
    body = forged_body(key)
    signed = b"H2" + hmac.digest(codec.load_sign_key(), body, "sha256") + body
    client = redis_sync.Redis.from_url(redis_server.url)
    client.set(cache_redis.CACHE_PREFIX + key, signed)
    assert ask(herd) == ("NOTHING", None)
    stored = client.get(cache_redis.CACHE_PREFIX + key)
    assert stored is not None and stored.startswith(b"HF") and b"NOTHING" not in stored
    client.close()


# ---- the disk file ---------------------------------------------------------------------


def disk_tables(path: Path, **extra: Any) -> dict[str, Any]:
    return {"cache_disk": {"path": str(path), **extra}}


@pytest.mark.parametrize("kind", ["unsigned (old format)", "signed with a guessed key", "garbage"])
def test_an_entry_planted_in_the_sqlite_file_is_a_miss(tmp_path: Path, kind: str) -> None:
    db = tmp_path / "responses.sqlite3"
    herd, _model = herd_with(disk_tables(db))
    ask(herd, "warm up")  # creates the file and its table
    key = key_of(herd)
    blob = forgeries(key)[kind]
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT OR REPLACE INTO entries (key, value, expires, accessed, size) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, blob, time.time() + 3600, time.time(), len(blob)),
        )
    herd2, model2 = herd_with(disk_tables(db))
    assert ask(herd2) == ("NOTHING", None)  # before the fix: ("BUY 0.99", "disk")
    assert len(model2.history) == 1
    herd3, model3 = herd_with(disk_tables(db), answer="never asked")
    assert ask(herd3) == ("NOTHING", "disk") and not model3.history  # ours is served


def test_an_entry_copied_under_another_key_is_a_miss(tmp_path: Path) -> None:
    """A genuine signed entry moved to another question's key (a replay) is refused."""
    db = tmp_path / "responses.sqlite3"
    herd, _ = herd_with(disk_tables(db), answer="BUY 0.99")
    ask(herd, "a question whose answer is BUY")
    with sqlite3.connect(db) as conn:
        (blob,) = conn.execute("SELECT value FROM entries").fetchone()
        target = key_of(herd)
        conn.execute(
            "INSERT INTO entries (key, value, expires, accessed, size) VALUES (?, ?, ?, ?, ?)",
            (target, blob, time.time() + 3600, time.time(), len(blob)),
        )
    herd2, _ = herd_with(disk_tables(db))
    assert ask(herd2) == ("NOTHING", None)


# ---- the signing key ---------------------------------------------------------------------


def test_the_signing_key_is_made_once_private_to_the_user(tmp_path: Path) -> None:
    path = tmp_path / "data" / "modelherd" / "cache.key"
    key = codec.load_sign_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    codec._KEYS.clear()
    assert codec.load_sign_key(path) == key  # read back, not replaced
    assert key.hex() not in repr(codec.HmacSeal(key))


def test_a_process_reading_the_key_while_another_creates_it_never_sees_half_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`herd serve --workers 2` starts both workers at once: the second must find no key
    file (and make or read one) or the whole key — an empty file read as "damaged"
    stopped every worker."""
    path = tmp_path / "cache.key"
    codec._KEYS.clear()
    seen: list[bytes | None] = []
    real_write = os.write

    def write(fd: int, data: bytes) -> int:  # what a second process sees mid-creation
        try:
            seen.append(codec._read_key_file(path))
        except FileNotFoundError:
            seen.append(None)
        return real_write(fd, data)

    monkeypatch.setattr(codec.os, "write", write)
    key = codec.load_sign_key(path)
    monkeypatch.undo()
    assert seen == [None]
    assert codec._read_key_file(path) == key
    assert [p.name for p in tmp_path.iterdir()] == ["cache.key"]  # no temporary file left


def test_a_signing_key_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "cache.key"
    codec.load_sign_key(path)
    codec._KEYS.clear()
    path.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        codec.load_sign_key(path)
    assert str(info.value) == (
        f"cache signing key {path} is readable by others or not yours — run `chmod 600 "
        f"{path}` (or delete it: a new key is made, old entries miss)"
    )
    path.chmod(0o600)
    path.write_text("not hex\n")
    codec._KEYS.clear()
    with pytest.raises(ConfigError, match=r"cache signing key .* is damaged — delete it"):
        codec.load_sign_key(path)


def test_a_short_or_missing_sign_key_env_is_one_line(tmp_path: Path) -> None:
    settings = cache_disk.DiskSettings(
        path=str(tmp_path / "c.sqlite3"), sign_key_env="HERD_SIGN_KEY"
    )
    for env, state in (({}, "is not set"), ({"HERD_SIGN_KEY": "short"}, "is shorter than 32")):
        with pytest.raises(ConfigError) as info:
            codec.make_seal(settings, env, "p.toml: [plugins.cache_disk]")
        message = str(info.value)
        assert message.startswith(
            f"p.toml: [plugins.cache_disk] sign_key_env: the environment variable HERD_SIGN_KEY {state}"
        )
        assert "short" not in message.replace("shorter", "")  # the value is never echoed


def test_the_disk_cache_file_is_private(tmp_path: Path) -> None:
    """Others on the host can neither read the answers nor plant entries (was 0644)."""
    db = tmp_path / "new-folder" / "responses.sqlite3"
    herd, _ = herd_with(disk_tables(db))
    ask(herd)
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # a file an older version left 0644 is tightened when it is opened
    db.chmod(0o644)
    herd2, _ = herd_with(disk_tables(db), answer="never asked")
    assert ask(herd2) == ("NOTHING", "disk")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
