"""`cache_disk`: the L2 response cache, one SQLite file in WAL mode.

Off until `[plugins.cache_disk]` exists in plugins.toml. It survives restarts and is
shared by every process on the host that points at the same file (WAL: readers never
wait for the writer). Size is capped by the pages the database really uses; over
the cap the least-recently-used entries go first.

Fault handling, the promise being "a miss and one warning, never a crash or a wrong
answer":
- a damaged value (checksum, decryption, format) is a miss and is deleted;
- a damaged file ("not a database", "malformed") is moved aside as
  `<file>.corrupt-<time>` and a fresh one is started;
- a full disk or a locked file skips the store; the call already has its answer.

Reads run on the event loop (a primary-key lookup in a WAL database is a few
microseconds and never waits for a lock). Writes are write-behind: a store seals the
answer into bytes on the event loop (so a caller changing the response afterwards
changes nothing stored) and returns; the tier's own writer thread commits whatever
has piled up in one transaction, on its own connection. Until then a get for that
key is served from the pending buffer. The buffer is bounded (`write_behind_max`
answers): past it a store waits for the disk, as every store did before. `aclose()`
— and, for a process that never closes its herd, interpreter exit — writes what is
pending. A failed batch counts one error per answer it held and warns once, as a
failed store always did. Hits record their access time in memory and it is written
with the next batch, so a hit costs no write.

This module is the thin entry (settings, hooks); disk_tier.py holds the tier, imported
when the table turns it on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.lazy_model import LazyModel
from modelherd.plugins.cache.codec import make_seal, parse_size
from pydantic import ConfigDict, field_validator

if TYPE_CHECKING:
    import click
    from modelherd.kernel import Herd


def default_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("modelherd")) / "responses.sqlite3"


class DiskSettings(LazyModel):
    """`[plugins.cache_disk]`."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: the SQLite file; default: the user cache dir (platformdirs) / responses.sqlite3
    path: str | None = None
    #: seconds an entry lives unless the call passes cache_ttl=; 0 = until evicted
    ttl: float = 7 * 24 * 3600.0
    max_bytes: int = 512 * 1000**2
    #: env var holding a Fernet key: values are encrypted at rest
    encrypt_key_env: str | None = None
    #: env var holding the key that signs entries (default: the user's own key file)
    sign_key_env: str | None = None
    #: how long a store waits for another process's write lock, milliseconds
    busy_timeout_ms: int = 200
    #: answers a store may leave to the background writer (write-behind); past it a
    #: store waits for the disk; 0 = every store waits for its own write
    write_behind_max: int = 1024

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)

    @field_validator("ttl", "busy_timeout_ms", "write_behind_max")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must not be negative")
        return value


def load_settings(herd: Herd) -> DiskSettings | None:
    """The validated table, or None when [plugins.cache_disk] is absent (tier off)."""
    if "cache_disk" not in herd.config.plugins:
        return None
    return herd.plugin_config("cache_disk", DiskSettings, "docs/cache.md")


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("cache_disk", DiskSettings, "docs/cache.md")


@hookimpl
def register_cache_tiers(register: Callable[..., None], herd: Herd) -> None:
    settings = load_settings(herd)
    if settings is None or not settings.enabled:
        return
    from modelherd.plugins.cache.disk_tier import DiskTier

    seal = make_seal(settings, herd.env, f"{herd.config.source}: [plugins.cache_disk]")
    register(DiskTier(settings, seal))


@hookimpl
def register_commands(cli: click.Group) -> None:
    from modelherd.plugins.cache.cli import add_cache_commands

    add_cache_commands(cli)
