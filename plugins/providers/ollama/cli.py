"""`herd pull MODEL` and `herd ollama list|ps|show|unload`, added by the ollama plugin.

MODEL is a plugins.toml alias served by Ollama (its host and model name are used)
or a plain Ollama name (`llama3.2`, `ollama/qwen3`). Every command takes `--json`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import click
from modelherd.errors import HerdError
from modelherd.types import ChatRequest, ModelSpec


def _herd(ctx: click.Context) -> Any:
    state = ctx.find_root().obj
    getter = getattr(state, "herd", None)
    if getter is None:
        return None
    try:
        return getter()
    except HerdError:
        return None  # a broken plugins.toml must not stop `herd pull llama3.2`


def _target(ctx: click.Context, model: str | None, host: str | None) -> Any:
    """The OllamaModel a command acts on (no network)."""
    from modelherd.plugins.providers.ollama import OllamaModel

    herd = _herd(ctx)
    spec: ModelSpec | None = None
    if herd is not None and model and model in herd.config.models:
        candidate = herd.config.spec(model)
        if candidate.provider != "ollama":
            raise click.UsageError(
                f"'{model}' is served by {candidate.provider}, not Ollama — give an Ollama "
                f"alias or model name (e.g. llama3.2)"
            )
        spec = candidate
    if spec is None:
        name = (model or "").removeprefix("ollama/")
        spec = ModelSpec(alias=name or "ollama", provider="ollama", model=name)
    if host:
        spec = spec.model_copy(update={"settings": {**spec.settings, "host": host}})
    return OllamaModel(spec, herd)


def _run(target: Any, work: Callable[[], Awaitable[Any]]) -> Any:
    """Run `work` in an event loop; transport errors become the provider's typed errors."""
    import anyio
    from modelherd.plugins.providers.client_pool import pool_of
    from modelherd.plugins.providers.ollama import _POOL

    async def go() -> Any:
        try:
            return await work()
        except HerdError:
            raise
        except Exception as exc:
            request = ChatRequest(
                alias=target.spec.alias, provider="ollama", model=target.name, messages=[]
            )
            raise await target.map_error(exc, request, target.name) from None
        finally:
            await pool_of(target.herd, _POOL).aclose_current_loop()

    return anyio.run(go)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


def _aliases_by_model(ctx: click.Context) -> dict[str, list[str]]:
    from modelherd.plugins.providers.ollama import normalize_name

    herd = _herd(ctx)
    found: dict[str, list[str]] = {}
    if herd is None:
        return found
    for alias, table in herd.config.models.items():
        if table.get("provider") == "ollama" and table.get("model"):
            found.setdefault(normalize_name(str(table["model"])), []).append(alias)
    return found


host_option = click.option(
    "--host", help="Ollama server (default: the alias's host, OLLAMA_HOST, http://127.0.0.1:11434)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.command("pull")
@click.argument("model")
@host_option
@json_option
@click.pass_context
def pull_cmd(ctx: click.Context, model: str, host: str | None, as_json: bool) -> None:
    """Download an Ollama model (an alias or a name like llama3.2), with progress."""
    from modelherd.plugins.providers.ollama.admin import pull

    target = _target(ctx, model, host)
    if not target.name:
        raise click.UsageError("give a model: herd pull llama3.2")

    async def work() -> dict[str, Any]:
        import ollama

        layers = 0
        last = ""
        console = _console(stderr=True)
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        try:
            with Progress(*columns, console=console, disable=as_json, transient=False) as bar:
                tasks: dict[str, Any] = {}
                async for step in pull(target.client(), target.name):
                    last = step["status"] or last
                    digest, total = step["digest"], step["total"]
                    if digest and total:
                        if digest not in tasks:
                            layers += 1
                            label = f"pulling {digest.removeprefix('sha256:')[:12]}"
                            tasks[digest] = bar.add_task(label, total=total)
                        bar.update(tasks[digest], completed=step["completed"] or 0)
                    elif not as_json and step["status"]:
                        bar.console.print(step["status"], highlight=False)
        except ollama.ResponseError as exc:
            from modelherd.errors import ModelNotFoundError

            raise ModelNotFoundError(
                f"Ollama at {target.host} could not pull '{target.name}': {exc.error} — "
                f"check the name at https://ollama.com/library"
            ) from None
        return {"model": target.name, "host": target.host, "status": last, "layers": layers}

    result = _run(target, work)
    if as_json:
        _print_json(result)
    else:
        _console().print(
            f"[green]✓[/green] {result['model']} is ready on {result['host']}", highlight=False
        )


@click.group("ollama")
def ollama_group() -> None:
    """Manage the models on an Ollama server."""


@ollama_group.command("list")
@host_option
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, host: str | None, as_json: bool) -> None:
    """Models pulled on the server, and the aliases that use them."""
    from modelherd.plugins.providers.ollama.admin import human_size, list_models

    target = _target(ctx, None, host)
    models = _run(target, lambda: list_models(target.client()))
    aliases = _aliases_by_model(ctx)
    for entry in models:
        entry["aliases"] = aliases.get(entry["name"], [])
    missing = sorted(set(aliases) - {m["name"] for m in models})
    if as_json:
        _print_json(
            {
                "host": target.host,
                "models": models,
                "configured_not_pulled": {n: aliases[n] for n in missing},
            }
        )
        return
    from rich.table import Table

    table = Table(title=f"Ollama models on {target.host}")
    for column in ("name", "size", "params", "quant", "aliases"):
        table.add_column(column)
    for m in models:
        table.add_row(
            m["name"],
            human_size(m["size"]),
            m.get("parameter_size") or "-",
            m.get("quantization_level") or "-",
            ", ".join(m["aliases"]) or "-",
        )
    for name in missing:
        table.add_row(
            f"[red]{name}[/red]",
            "not pulled",
            "",
            "",
            f"{', '.join(aliases[name])} — run `herd pull {name}`",
        )
    _console().print(table)


@ollama_group.command("ps")
@host_option
@json_option
@click.pass_context
def ps_cmd(ctx: click.Context, host: str | None, as_json: bool) -> None:
    """Models loaded in memory now: size, VRAM share, when they unload."""
    from modelherd.plugins.providers.ollama.admin import human_size, ps

    target = _target(ctx, None, host)
    loaded = _run(target, lambda: ps(target.client()))
    if as_json:
        _print_json({"host": target.host, "models": loaded})
        return
    from rich.table import Table

    table = Table(title=f"loaded on {target.host}")
    for column in ("name", "size", "in VRAM", "context", "unloads at"):
        table.add_column(column)
    for m in loaded:
        table.add_row(
            m["name"],
            human_size(m["size"]),
            human_size(m["size_vram"]),
            str(m["context_length"] or "-"),
            str(m["expires_at"]),
        )
    _console().print(table if loaded else "nothing is loaded")


@ollama_group.command("show")
@click.argument("model")
@host_option
@json_option
@click.pass_context
def show_cmd(ctx: click.Context, model: str, host: str | None, as_json: bool) -> None:
    """Context length, parameter count, quantization and capabilities of a model."""
    from modelherd.plugins.providers.ollama.admin import show

    target = _target(ctx, model, host)
    info = _run(target, lambda: show(target.client(), target.name))
    if as_json:
        _print_json(info)
        return
    for key in (
        "name",
        "family",
        "parameter_size",
        "parameter_count",
        "quantization_level",
        "context_length",
        "capabilities",
    ):
        value = info.get(key)
        if isinstance(value, list):
            value = ", ".join(value)
        click.echo(f"{key:>20}: {value if value not in (None, '') else '-'}")


@ollama_group.command("unload")
@click.argument("model")
@host_option
@json_option
@click.pass_context
def unload_cmd(ctx: click.Context, model: str, host: str | None, as_json: bool) -> None:
    """Free a model's memory now (keep_alive 0)."""
    from modelherd.plugins.providers.ollama.admin import unload

    target = _target(ctx, model, host)
    done = _run(target, lambda: unload(target.client(), target.name))
    if as_json:
        _print_json({"model": target.name, "host": target.host, "unloaded": done})
    else:
        click.echo(
            f"{target.name} unloaded from {target.host}"
            if done
            else f"{target.host} did not confirm unloading {target.name}"
        )


def add_commands(cli: click.Group) -> None:
    cli.add_command(pull_cmd)
    cli.add_command(ollama_group)
