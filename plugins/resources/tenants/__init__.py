"""`tenants`: per-tenant quotas — `herd.chat(..., tenant="alice")`.

Tiers and tenants come from plugins.toml (`[tiers.*]`, `[tenants.*]`). The entry
point stays light; runtime.py holds the tiers, the limits and the per-call
hooks and loads at startup only when a tenant is configured. `herd tenants` lists
them. docs/resources.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.stash import StashKey

if TYPE_CHECKING:
    import click
    from modelherd.kernel import Herd
    from modelherd.plugins.resources.tenants.runtime import Tenants


#: this Herd's running tenants (set by runtime.start, read at shutdown); the key lives
#: here so that shutdown can test for it without importing the runtime module
RUNTIME: StashKey[Tenants] = StashKey()


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("tenants", _check_settings, "docs/resources.md")


def _check_settings(table: dict[str, Any], source: str) -> object:
    # settings.py is imported only when there is a table to check
    from modelherd.plugins.resources.tenants.settings import check_tenants_table

    return check_tenants_table(table, source)


@hookimpl
def startup(herd: Herd) -> Awaitable[None] | None:
    if not herd.config.tenants:
        return None  # no tenant: no hook, and not even the core module is imported
    from modelherd.plugins.resources.tenants.runtime import start

    return start(herd)


@hookimpl
def shutdown(herd: Herd) -> Awaitable[None] | None:
    if RUNTIME not in herd.stash:
        return None
    from modelherd.plugins.resources.tenants.runtime import stop

    return stop(herd)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from modelherd.plugins.resources.tenants.cli import make_tenants_command

    cli.add_command(make_tenants_command())
