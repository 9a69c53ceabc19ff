"""KPI alerts with recovery, live statistics, and the `herd top` command.

On by default — its per-call cost is a few microseconds (docs/performance.md) — and
switched off with `[plugins.alerts] enabled = false`. At startup it registers
`AlertHooks` (runtime.py): sliding-window KPIs per model and herd-wide, a
per-model circuit breaker in `before_call` that sends calls to the alias's fallbacks
(its state shared by replicas through `[plugins.serve]`'s Redis: shared.py),
notifiers (log, webhook, the `on_alert` hook) and the status file `herd top` reads.
Settings and their runbook defaults: settings.py and docs/observability.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl

if TYPE_CHECKING:
    import click
    from modelherd import Herd
    from modelherd.plugins.observability.alerts.runtime import AlertHooks

HOOKS_NAME = "alerts-calls"


def alert_hooks(herd: Herd) -> AlertHooks | None:
    """The running alerts runtime of this herd (None when off or not started)."""
    if not herd.plugins_loaded:
        return None
    from modelherd.plugins.observability.alerts.runtime import AlertHooks

    plugin = herd.pm.get_plugin(HOOKS_NAME)
    return plugin if isinstance(plugin, AlertHooks) else None


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("alerts", _check_settings, "docs/observability.md")


def _check_settings(table: dict[str, Any], source: str) -> object:
    # settings.py (a pydantic model) is imported only when there is a table to check:
    # loading the plugins (every command) does not pay for it
    from modelherd.plugins.observability.alerts.settings import parse_settings

    return parse_settings(table, source)


@hookimpl
def startup(herd: Herd) -> None:
    if herd.pm.get_plugin(HOOKS_NAME) is not None:
        return
    from modelherd.plugins.observability.alerts.settings import parse_settings

    settings = parse_settings(herd.plugin_settings("alerts"), herd.config.source)
    if not settings.enabled:
        return
    from modelherd.plugins.observability.alerts.notify import Notifier, WebhookSender
    from modelherd.plugins.observability.alerts.runtime import AlertHooks
    from modelherd.plugins.observability.alerts.shared import shared_config
    from modelherd.plugins.observability.alerts.status import default_status_dir, status_path

    shared = shared_config(herd, settings)  # a wrong setting stops here (ConfigError)

    webhook = (
        WebhookSender(settings.webhook_url, settings.webhook_timeout_s)
        if settings.webhook_url
        else None
    )
    notifier = Notifier(herd, settings.log, webhook)
    status = status_path(default_status_dir(settings.status_dir)) if settings.status_file else None
    hooks = AlertHooks(herd, settings, notifier, status, shared=shared)
    herd.register_plugin(hooks, name=HOOKS_NAME)
    hooks.start()


@hookimpl
def shutdown(herd: Herd) -> None:
    hooks = alert_hooks(herd)
    if hooks is not None:
        hooks.stop()
        herd.unregister_plugin(hooks)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from modelherd.plugins.observability.alerts.top import top_command

    cli.add_command(top_command)


def __getattr__(name: str) -> Any:  # `from modelherd.plugins.observability.alerts import Alert`
    if name == "Alert":
        from modelherd.plugins.observability.alerts.kpi import Alert

        return Alert
    raise AttributeError(name)
