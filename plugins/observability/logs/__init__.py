"""`logs`: every call in a local SQLite log, and `herd logs` / `herd usage` to read it.

On by default, metadata only (docs/logs.md): time, tenant, agent, run id, alias,
provider, model, fallback, cache tier, tokens, latency, cost, error type. Prompts and
answers are kept only with `[plugins.logs] content = true`; known secrets (the
values of *_KEY / *_TOKEN / *SECRET* variables) are scrubbed from whatever is kept.
`enabled = false` switches it off. The hooks only enqueue; one background thread
writes (writer.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl

if TYPE_CHECKING:
    import click
    from modelherd import Herd
    from modelherd.plugins.observability.logs.writer import LogWriter

HOOKS_NAME = "logs-calls"


def log_writer(herd: Herd) -> LogWriter | None:
    """The running call-log writer of this herd (None when off or not started)."""
    if not herd.plugins_loaded:
        return None
    hooks = herd.pm.get_plugin(HOOKS_NAME)
    return getattr(hooks, "writer", None)


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("logs", _check_settings, "docs/logs.md")


def _check_settings(table: dict[str, Any], source: str) -> object:
    # settings.py is imported only when there is a table to check
    from modelherd.config import validate_table
    from modelherd.plugins.observability.logs.settings import DOCS, LogSettings

    return validate_table(LogSettings, table, f"{source}: [plugins.logs]", DOCS)


# trylast: after the audit plugin's startup, whose writer this one adopts (audit_feed.py)
@hookimpl(trylast=True)
def startup(herd: Herd) -> None:
    if herd.pm.get_plugin(HOOKS_NAME) is not None:
        return
    from modelherd.plugins.observability.logs.settings import DOCS, LogSettings

    settings = herd.plugin_config("logs", LogSettings, DOCS)
    if not settings.enabled:
        return
    from modelherd.plugins.observability.logs.runtime import start

    hooks = start(herd, settings)
    herd.register_plugin(hooks, name=HOOKS_NAME)
    from modelherd.plugins.observability.logs.audit_feed import adopt_audit

    adopt_audit(herd, hooks)


@hookimpl
def shutdown(herd: Herd) -> None:
    if not herd.plugins_loaded:
        return
    hooks = herd.pm.get_plugin(HOOKS_NAME)
    if hooks is not None:
        herd.unregister_plugin(hooks)
        hooks.writer.close()


@hookimpl
def register_commands(cli: click.Group) -> None:
    from modelherd.plugins.observability.logs.cli import logs_command, usage_command

    cli.add_command(logs_command)
    cli.add_command(usage_command)
