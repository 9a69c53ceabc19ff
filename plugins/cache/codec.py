"""How the disk and Redis tiers turn a ChatResponse into bytes and back (not a plugin).

Every stored value carries the cache key it was stored under and is checked on the
way back: a plaintext value by a BLAKE2b checksum, an encrypted one by Fernet's
HMAC. A value that fails either check (bit rot, a torn write, a wrong or rotated
key, another writer's format) is reported as `CorruptEntryError` — the tier turns
that into a miss — so a damaged entry can never come back as a wrong answer.

Encryption (optional): `encrypt_key_env = "HERD_CACHE_KEY"` in a tier's table names
an environment variable holding one Fernet key, or several separated by commas
(the first encrypts, all decrypt: key rotation). The key never leaves this module.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from modelherd.errors import ConfigError, MissingDependencyError
from modelherd.types import ChatResponse

_PLAIN = b"H1"
_FERNET = b"HF"
_SUM_BYTES = 16


class CorruptEntryError(Exception):
    """A stored value that cannot be trusted; the message says why (never a secret)."""


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


def encode(key: str, response: ChatResponse, fernet: Any) -> bytes:
    body = json.dumps(
        {"k": key, "r": response.model_dump(mode="json", exclude={"latency_s", "cache_tier"})},
        separators=(",", ":"),
    ).encode()
    if fernet is not None:
        return _FERNET + fernet.encrypt(body)
    return _PLAIN + hashlib.blake2b(body, digest_size=_SUM_BYTES).digest() + body


def decode(key: str, blob: bytes, fernet: Any) -> ChatResponse:
    """The stored response, or CorruptEntryError when the value cannot be trusted."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CorruptEntryError(f"value has type {type(blob).__name__}, expected bytes")
    blob = bytes(blob)
    magic = blob[:2]
    if magic == _PLAIN:
        if fernet is not None:
            # with encryption on, an unauthenticated value could be forged: refuse it
            raise CorruptEntryError("unencrypted value while encryption is on")
        digest, body = blob[2 : 2 + _SUM_BYTES], blob[2 + _SUM_BYTES :]
        if hashlib.blake2b(body, digest_size=_SUM_BYTES).digest() != digest:
            raise CorruptEntryError("checksum mismatch")
    elif magic == _FERNET:
        if fernet is None:
            raise CorruptEntryError("encrypted value but no encrypt_key_env is configured")
        try:
            body = fernet.decrypt(blob[2:])
        except Exception:  # InvalidToken: wrong key, rotated key, or tampering
            raise CorruptEntryError("cannot decrypt (wrong key or damaged value)") from None
    else:
        raise CorruptEntryError("unknown value format")
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
