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


def _config_path(ctx: click.Context, given: str | None) -> str | None:
    # the root `herd` group may already hold --config; ours wins when both are set
    if given:
        return given
    root = ctx.find_root()
    value = root.params.get("config") if root is not ctx else None
    return value if isinstance(value, str) else None


def _herd(ctx: click.Context, config: str | None) -> Herd:
    from modelherd.kernel import Herd

    root = ctx.find_root()
    profile = root.params.get("profile") if root is not ctx else None
    return Herd(config_path=_config_path(ctx, config),
                profile=profile if isinstance(profile, str) else None)


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


def _fail(exc: Exception) -> None:
    from modelherd.errors import HerdError

    if isinstance(exc, HerdError):
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(exc.exit_code)
    raise exc


@click.group("cache")
def cache_group() -> None:
    """The response cache: what each tier holds, and clearing it."""


@cache_group.command("stats")
@click.option("--config", "config", default=None, help="plugins.toml to use")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def stats_command(ctx: click.Context, config: str | None, as_json: bool) -> None:
    """Entries, size and counters of each cache tier that is on."""
    try:
        data = asyncio.run(_stats(_herd(ctx, config)))
    except Exception as exc:
        _fail(exc)
        return
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
    for column in ("tier", "entries", "size", "hits", "misses", "stores", "evictions",
                   "errors", "where / state"):
        table.add_column(column)
    for name, row in data.items():
        where = row.get("path") or row.get("url") or "this process"
        if row.get("state"):
            where = f"{where} ({row['state']})"
        table.add_row(name, str(row.get("entries", "?")), str(row.get("size_bytes", "?")),
                      *(str(row.get(k, 0)) for k in ("hits", "misses", "stores", "evictions",
                                                       "errors")), where)
    console.print(table)
    console.print("counters are for this process; the memory tier starts empty in each one")


@cache_group.command("clear")
@click.option("--tier", default=None, help="only this tier (memory, disk, redis)")
@click.option("--config", "config", default=None, help="plugins.toml to use")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def clear_command(ctx: click.Context, tier: str | None, config: str | None,
                  as_json: bool) -> None:
    """Remove cached answers from every tier, or from one."""
    try:
        removed = asyncio.run(_clear(_herd(ctx, config), tier))
    except Exception as exc:
        _fail(exc)
        return
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
