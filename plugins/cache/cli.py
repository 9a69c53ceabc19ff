"""`herd cache stats` and `herd cache clear [--tier T]` (added by the cache plugins).

Each cache plugin's `register_commands` calls `add_cache_commands`; the first one
adds the group, so the commands exist whichever tiers are installed. The memory
tier lives inside one process: a fresh `herd` process shows it empty.

The table shows what each tier holds, read from the tier itself (the disk file, the
redis keys), so it is the same from any process. Hit/miss/store counters belong to one
process; the `herd cache stats` process has made no calls, so they are left out of the
table (`--json` keeps them, under their names, for a herd that prints its own stats).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from modelherd.kernel import Herd


def _herd(ctx: click.Context) -> Herd:
    """A fresh Herd built from the root `herd` options (--config, --profile, --strict)."""
    from modelherd.kernel import Herd

    state = ctx.find_root().obj
    return Herd(
        config_path=getattr(state, "config_path", None),
        profile=getattr(state, "profile", None),
        strict=bool(getattr(state, "strict", False)),
    )


async def _stats(herd: Herd) -> dict[str, Any]:
    await herd.start()
    try:
        cache = herd.cache
        if cache is None:
            return {}
        out = cache.stats()
        for tier in cache.tiers:
            counter = getattr(tier, "count_entries", None)
            if counter is not None:
                try:
                    out[tier.name]["entries"] = await counter()
                except Exception as exc:
                    out[tier.name]["state"] = f"unreachable: {type(exc).__name__}"
        return out
    finally:
        await herd.aclose()


async def _clear(herd: Herd, tier: str | None) -> dict[str, int]:
    await herd.start()
    try:
        cache = herd.cache
        if cache is None:
            return {}
        names = [t.name for t in cache.tiers]
        if tier is not None and tier not in names:
            from modelherd.errors import ConfigError

            raise ConfigError(
                f"no cache tier named '{tier}' is on — tiers on: {', '.join(names)} "
                f"(configure others in [plugins.cache_disk] / [plugins.cache_redis])"
            )
        return await cache.clear(tier)
    finally:
        await herd.aclose()


@click.group("cache")
def cache_group() -> None:
    """The response cache: what each tier holds, and clearing it."""


@cache_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def stats_command(ctx: click.Context, as_json: bool) -> None:
    """What each cache tier that is on holds: entries, bytes, last use, expiry."""
    data = asyncio.run(_stats(_herd(ctx)))
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not data:
        console.print("no cache tier is on — see docs/cache.md")
        return
    table = Table(title="response cache")
    for column in ("tier", "entries", "bytes", "last used", "expires"):
        table.add_column(column, no_wrap=True, justify="left" if column == "tier" else "right")
    wheres = []
    now = time.time()
    for name, row in data.items():
        table.add_row(
            name,
            str(row.get("entries", "?")),
            _size(row.get("size_bytes")),
            _last_used(row, now),
            _expires(row, now),
        )
        where = row.get("path") or row.get("url") or "this process's memory"
        state = f" ({row['state']})" if row.get("state") else ""
        wheres.append(f"{name}: {where}{state}")
    console.print(table)
    for line in wheres:
        console.print(line, soft_wrap=True, highlight=False)
    console.print(
        "the memory tier lives in one process, so a fresh `herd` shows it empty; hit/miss "
        "counters are per process too (a running herd's cache hit rate: `herd top`)",
        highlight=False,
    )


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _size(value: Any) -> str:
    if not isinstance(value, int | float):
        return "?"
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _last_used(row: dict[str, Any], now: float) -> str:
    oldest, newest = row.get("last_used_oldest"), row.get("last_used_newest")
    if oldest is None or newest is None:
        return "—"
    recent, old = _duration(now - newest), _duration(now - oldest)
    return f"{recent} ago" if recent == old else f"{recent}–{old} ago"


def _expires(row: dict[str, Any], now: float) -> str:
    if row.get("entries") and "expires_next" in row:
        if row["expires_next"] is None:
            return "never"
        return f"next in {_duration(row['expires_next'] - now)}"
    ttl = row.get("ttl_s")
    return f"ttl {_duration(ttl)}" if isinstance(ttl, int | float) and ttl > 0 else "—"


@cache_group.command("clear")
@click.option("--tier", default=None, help="only this tier (memory, disk, redis)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def clear_command(ctx: click.Context, tier: str | None, as_json: bool) -> None:
    """Remove cached answers from every tier, or from one."""
    removed = asyncio.run(_clear(_herd(ctx), tier))
    if as_json:
        click.echo(json.dumps(removed))
        return
    if not removed:
        click.echo("no cache tier is on — nothing to clear")
    for name, count in removed.items():
        click.echo(f"{name}: removed {count if count >= 0 else 'all'} entries")


def add_cache_commands(cli: click.Group) -> None:
    if "cache" not in cli.commands:
        cli.add_command(cache_group)
