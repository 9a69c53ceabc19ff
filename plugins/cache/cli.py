"""`herd cache stats` and `herd cache clear [--tier T]` (added by the cache plugins).

Each cache plugin's `register_commands` calls `add_cache_commands`; the first one
adds the group, so the commands exist whichever tiers are installed. The memory
tier lives inside one process: a fresh `herd` process shows it empty.
"""

from __future__ import annotations

import asyncio
import json
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
    """Entries, size and counters of each cache tier that is on."""
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
    for column in ("tier", "entries", "bytes", "hits", "misses", "stores", "evictions", "errors"):
        table.add_column(column, no_wrap=True)
    wheres = []
    for name, row in data.items():
        table.add_row(
            name,
            str(row.get("entries", "?")),
            str(row.get("size_bytes", "?")),
            *(str(row.get(k, 0)) for k in ("hits", "misses", "stores", "evictions", "errors")),
        )
        where = row.get("path") or row.get("url") or "this process's memory"
        state = f" ({row['state']})" if row.get("state") else ""
        wheres.append(f"{name}: {where}{state}")
    console.print(table)
    for line in wheres:
        console.print(line, soft_wrap=True, highlight=False)
    console.print("counters are for this process; the memory tier starts empty in each one")


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
