"""`tenants`: per-tenant quotas — `herd.chat(..., tenant="alice")`.

Tiers and tenants come from plugins.toml (`[tiers.*]`, `[tenants.*]`). The entry
point stays light; tenants_core.py holds the tiers, the limits and the per-call
hooks and loads at startup only when a tenant is configured. `herd tenants` lists
them. docs/resources.md.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from modelherd import hookimpl

if TYPE_CHECKING:
    import click
    from modelherd.kernel import Herd


@hookimpl
def startup(herd: Herd) -> Awaitable[None] | None:
    if not herd.config.tenants:
        return None  # no tenant: no hook, and not even the core module is imported
    from modelherd.plugins.resources.tenants.runtime import start

    return start(herd)


@hookimpl
def shutdown(herd: Herd) -> Awaitable[None] | None:
    if "_tenants_plugin" not in herd.__dict__:
        return None
    from modelherd.plugins.resources.tenants.runtime import stop

    return stop(herd)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from modelherd.plugins.resources.tenants.cli import make_tenants_command

    cli.add_command(make_tenants_command())
