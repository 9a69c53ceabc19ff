"""How the disk and Redis tiers turn a ChatResponse into bytes and back (not a plugin).

Every stored value is authenticated and carries the cache key it was stored under,
both checked on the way back:
- by default with an HMAC-SHA256 whose key only this user holds: a random key kept
  in the user data dir (`cache.key`, mode 0600, created on first use), or the key in
  `sign_key_env` when several hosts share one Redis;
- with encryption on, by Fernet (its own HMAC, under the encryption key).
Someone who can write to the Redis server or the SQLite file but has no key cannot
make an entry that passes: a planted, damaged, rotated or older unsigned value is
`CorruptEntryError`, which the tier turns into a miss — so a stored value can never
come back as an answer nobody of ours wrote.

Encryption (optional): `encrypt_key_env = "HERD_CACHE_KEY"` in a tier's table names
an environment variable holding one Fernet key, or several separated by commas
(the first encrypts, all decrypt: key rotation). Keys never leave this module.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from modelherd.errors import ConfigError, MissingDependencyError
from modelherd.types import ChatResponse

#: the unauthenticated format of earlier versions (a plain checksum): never trusted now
_PLAIN_V1 = b"H1"
_SIGNED = b"H2"
_FERNET = b"HF"
_MAC_BYTES = 32
#: the smallest signing key accepted from `sign_key_env`
MIN_SIGN_KEY_CHARS = 32
#: signing keys read once per process, by file path or env var name
_KEYS: dict[str, bytes] = {}


class CorruptEntryError(Exception):
    """A stored value that cannot be trusted; the message says why (never a secret)."""


class Seal(Protocol):
    """How a tier authenticates (and maybe encrypts) what it stores."""

    def seal(self, body: bytes) -> bytes: ...

    def open(self, blob: bytes) -> bytes: ...


class HmacSeal:
    """`H2` + HMAC-SHA256(key, body) + body: authenticated, readable."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:  # never the key
        return "HmacSeal()"

    def seal(self, body: bytes) -> bytes:
        return _SIGNED + hmac.digest(self._key, body, "sha256") + body

    def open(self, blob: bytes) -> bytes:
        magic = blob[:2]
        if magic != _SIGNED:
            raise CorruptEntryError(_wrong_format(magic, encrypted=False))
        mac, body = blob[2 : 2 + _MAC_BYTES], blob[2 + _MAC_BYTES :]
        if not hmac.compare_digest(mac, hmac.digest(self._key, body, "sha256")):
            raise CorruptEntryError("signature mismatch (damaged, or written without our key)")
        return body


class FernetSeal:
    """`HF` + a Fernet token: encrypted and authenticated by the encryption key."""

    __slots__ = ("_fernet",)

    def __init__(self, fernet: Any) -> None:
        self._fernet = fernet

    def __repr__(self) -> str:
        return "FernetSeal()"

    def seal(self, body: bytes) -> bytes:
        return _FERNET + self._fernet.encrypt(body)

    def open(self, blob: bytes) -> bytes:
        magic = blob[:2]
        if magic != _FERNET:
            raise CorruptEntryError(_wrong_format(magic, encrypted=True))
        try:
            body: bytes = self._fernet.decrypt(blob[2:])
        except Exception:  # InvalidToken: wrong key, rotated key, or tampering
            raise CorruptEntryError("cannot decrypt (wrong key or damaged value)") from None
        return body


def _wrong_format(magic: bytes, *, encrypted: bool) -> str:
    if magic == _PLAIN_V1:
        return "unsigned value (an older format, or planted): not trusted"
    if magic == _FERNET:
        return "encrypted value but no encrypt_key_env is configured"
    if magic == _SIGNED and encrypted:
        # with encryption on, a readable value is not ours: refuse it
        return "unencrypted value while encryption is on"
    return "unknown value format"


def make_fernet(env_var: str | None, env: Mapping[str, str], where: str) -> Any:
    """A (Multi)Fernet from the key(s) in `env[env_var]`, or None when not configured."""
    if not env_var:
        return None
    raw = env.get(env_var, "")
    if not raw:
        raise ConfigError(
            f"{where} encrypt_key_env: the environment variable {env_var} is not set — "
            f'create a key with `python -c "from cryptography.fernet import Fernet; '
            f'print(Fernet.generate_key().decode())"` and export {env_var}=<that key>'
        )
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError:
        raise MissingDependencyError("cryptography", "crypto", "cache encryption") from None
    keys = []
    for index, part in enumerate(p.strip() for p in raw.split(",") if p.strip()):
        try:
            keys.append(Fernet(part.encode()))
        except (ValueError, TypeError):
            # never echo the value: it is a secret even when malformed
            raise ConfigError(
                f"{where} encrypt_key_env: key #{index + 1} in {env_var} is not a valid "
                f"Fernet key (32 url-safe base64-encoded bytes) — generate one with "
                f"Fernet.generate_key()"
            ) from None
    return MultiFernet(keys)


def sign_key_path() -> Path:
    """`cache.key` in the user data dir (`$HERD_DATA_DIR`, else the platform's), beside
    the trust store."""
    from modelherd.trust import data_dir

    return data_dir() / "cache.key"


def load_sign_key(path: Path | None = None) -> bytes:
    """This user's cache signing key: read from `path`, or created there (0600) first."""
    path = path or sign_key_path()
    cached = _KEYS.get(str(path))
    if cached is not None:
        return cached
    try:
        key = _read_key_file(path)
    except FileNotFoundError:
        key = _create_key_file(path)
    _KEYS[str(path)] = key
    return key


def _read_key_file(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        info = os.fstat(fd)
        if info.st_mode & 0o077 or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
            raise ConfigError(
                f"cache signing key {path} is readable by others or not yours — "
                f"run `chmod 600 {path}` (or delete it: a new key is made, old entries miss)"
            )
        raw = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(raw.decode("ascii"))
    except ValueError:
        key = b""
    if len(key) < 32:
        raise ConfigError(
            f"cache signing key {path} is damaged — delete it (a new one is made; "
            f"cached answers signed with the old one become misses)"
        )
    return key


def _create_key_file(path: Path) -> bytes:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    # written whole under a private name, then linked into place: a process starting
    # at the same moment (`herd serve --workers N`) sees no file or the whole key,
    # never the empty file an O_EXCL create shows before its write
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:  # another process made it first: use theirs
        return _read_key_file(path)
    finally:
        os.unlink(tmp)
    return key


def make_seal(settings: Any, env: Mapping[str, str], where: str, fernet: Any | None = None) -> Seal:
    """The tier's seal: Fernet when encryption is on, else an HMAC with the user's key.

    `settings` has `encrypt_key_env` and `sign_key_env` (the disk and Redis tables).
    """
    if fernet is None:
        fernet = make_fernet(settings.encrypt_key_env, env, where)
    if fernet is not None:
        return FernetSeal(fernet)
    env_var = settings.sign_key_env
    if not env_var:
        return HmacSeal(load_sign_key())
    raw = env.get(env_var, "")
    if len(raw) < MIN_SIGN_KEY_CHARS:
        state = "is not set" if not raw else f"is shorter than {MIN_SIGN_KEY_CHARS} characters"
        raise ConfigError(
            f"{where} sign_key_env: the environment variable {env_var} {state} — "
            f'export {env_var}=$(python -c "import secrets; print(secrets.token_hex(32))") '
            f"on every host that shares this cache"
        )
    # hashed so any long random string works as a key, and no byte of it is stored
    return HmacSeal(hashlib.sha256(b"modelherd-cache-sign\0" + raw.encode()).digest())


def encode(key: str, response: ChatResponse, seal: Seal) -> bytes:
    body = json.dumps(
        {"k": key, "r": response.model_dump(mode="json", exclude={"latency_s", "cache_tier"})},
        separators=(",", ":"),
    ).encode()
    return seal.seal(body)


def decode(key: str, blob: bytes, seal: Seal) -> ChatResponse:
    """The stored response, or CorruptEntryError when the value cannot be trusted."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CorruptEntryError(f"value has type {type(blob).__name__}, expected bytes")
    body = seal.open(bytes(blob))
    try:
        data = json.loads(body)
        if data.get("k") != key:
            raise CorruptEntryError("stored under a different key")
        return ChatResponse.model_validate(data["r"])
    except CorruptEntryError:
        raise
    except Exception as exc:
        raise CorruptEntryError(f"undecodable value ({type(exc).__name__})") from None


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "KI": 1024,
    "MI": 1024**2,
    "GI": 1024**3,
    "TI": 1024**4,
}


def parse_size(value: int | float | str) -> int:
    """Bytes from 1048576, "512MB", "1.5GiB", "64 MiB" (ValueError otherwise)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MB, not a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return int(value)
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"'{value}' is not a size — write e.g. 512MB, 2GiB or 1048576")
    unit = (match.group(2) or "").upper().rstrip("B")
    return int(float(match.group(1)) * _UNITS[unit])
