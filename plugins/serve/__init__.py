"""`serve`: `herd serve`, an OpenAI-, Ollama- and Anthropic-compatible HTTP gateway.

Tenant API keys (`herd keys`), Prometheus /metrics, health, and N workers or hosts
sharing Redis. The entry only adds the two commands; aiohttp, prometheus-client and
the gateway modules load when `herd serve` runs. docs/serve.md, docs/deploy.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl

if TYPE_CHECKING:
    import click


@hookimpl
def register_commands(cli: click.Group) -> None:
    from modelherd.plugins.serve.cli import make_keys_group, make_serve_command

    cli.add_command(make_serve_command())
    cli.add_command(make_keys_group())


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("serve", _check_settings, "docs/serve.md")


def _check_settings(table: dict[str, Any], source: str) -> object:
    # settings.py is imported only when there is a table to check
    from modelherd.config import validate_table
    from modelherd.plugins.serve.settings import DOCS, ServeSettings

    return validate_table(ServeSettings, table, f"{source}: [plugins.serve]", DOCS)
