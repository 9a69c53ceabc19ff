"""`serve`: `herd serve`, an OpenAI-, Ollama- and Anthropic-compatible HTTP gateway.

Tenant API keys (`herd keys`), Prometheus /metrics, health, and N workers or hosts
sharing Redis. The entry only adds the two commands; aiohttp, prometheus-client and
the gateway modules load when `herd serve` runs. docs/serve.md, docs/deploy.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelherd import hookimpl

if TYPE_CHECKING:
    import click


@hookimpl
def register_commands(cli: click.Group) -> None:
    from modelherd.plugins.serve.cli import make_keys_group, make_serve_command

    cli.add_command(make_serve_command())
    cli.add_command(make_keys_group())
