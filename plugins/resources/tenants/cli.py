"""`herd tenants`: the configured tenants, their tiers and effective limits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import click

FIELDS = (
    "max_concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "daily_tokens",
    "priority",
    "memory_share",
    "allowed_models",
)


def make_tenants_command() -> click.Command:
    import click

    @click.command("tenants")
    @click.option("--json", "as_json", is_flag=True, help="print JSON")
    @click.option("--config", "config_path", default=None, help="plugins.toml to read")
    @click.pass_context
    def tenants_command(ctx: click.Context, as_json: bool, config_path: str | None) -> None:
        """List tenants with their tier and effective limits (and the built-in tiers)."""
        import json

        from modelherd.errors import ConfigError
        from modelherd.kernel import Herd
        from modelherd.plugins.resources.tenants.settings import load_tenants_config

        root = ctx.find_root().params or {}
        try:
            herd = Herd(
                config_path=config_path or root.get("config_path"), profile=root.get("profile")
            )
            source = herd.config.source
            checked = load_tenants_config(herd.config)
            tiers, tenants = checked.tiers, checked.tenants
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
            return
        rows: list[dict[str, Any]] = [
            {
                "name": name,
                "kind": "tenant",
                "tier": t.tier,
                **{f: getattr(t.limits, f) for f in FIELDS},
            }
            for name, t in tenants.items()
        ]
        rows += [
            {"name": name, "kind": "tier", "tier": name, **{f: getattr(limits, f) for f in FIELDS}}
            for name, limits in tiers.items()
        ]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        from rich import box
        from rich.console import Console
        from rich.table import Table

        table = Table(
            title=f"tenants and tiers ({source})", box=box.SIMPLE, pad_edge=False, show_edge=False
        )
        for column in (
            "tenant",
            "tier",
            "conc.",
            "req/min",
            "tok/min",
            "tok/day",
            "prio",
            "mem",
            "models",
        ):
            table.add_column(column, no_wrap=True)
        for row in rows:
            table.add_row(
                row["name"] if row["kind"] == "tenant" else "",
                row["tier"],
                *(_fmt(row[f]) for f in FIELDS[:-1]),
                ", ".join(row["allowed_models"]),
            )
        Console().print(table)
        settings = checked.settings
        if not tenants:
            click.echo(
                'no tenants configured: add [tenants.<name>] tier = "basic" to '
                "plugins.toml (until then no call is limited)"
            )
            return
        if settings.default_tenant:
            click.echo(f"calls without tenant= count as '{settings.default_tenant}'")
        else:
            click.echo("calls without tenant= are refused (set [plugins.tenants] default_tenant)")
        if settings.unknown_tenant == "reject":
            click.echo("unconfigured tenants are refused")
        else:
            click.echo(
                f"unconfigured tenants share one '{settings.unknown_tenant}' bucket between them"
            )

    return tenants_command


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{int(value):,}" if value.is_integer() else f"{value:g}"
    return f"{value:,}" if isinstance(value, int) else str(value)
