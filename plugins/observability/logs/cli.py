"""`herd logs` (list, filter, search, show one call) and `herd usage` (grouped totals)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from modelherd.plugins.observability.logs.settings import DOCS, LogSettings, resolve_path
from modelherd.plugins.observability.logs.store import GROUPS, Filters, LogFileError, LogStore

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str | None) -> float | None:
    """`30m`, `2h`, `7d`, `1w`, or an ISO date/time (UTC unless it says otherwise)."""
    if text is None:
        return None
    span = _SPAN.match(text.strip())
    if span:
        return time.time() - float(span.group(1)) * _UNIT_S[span.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"'{text}' is neither a span (30m, 2h, 7d, 1w) nor an ISO date (2026-12-01)",
            param_hint="--since",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _open(ctx: click.Context) -> LogStore:
    from modelherd.cli import _herd
    from modelherd.errors import ConfigError

    herd = _herd(ctx)
    settings = herd.plugin_config("logs", LogSettings, DOCS)
    path: Path = resolve_path(settings)
    try:
        return LogStore(path, create=False)
    except LogFileError as exc:
        raise ConfigError(str(exc)) from None


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _money(amount: float | None, currency: str | None) -> str:
    if amount is None:
        return "unknown"
    sign = "$" if (currency or "USD") == "USD" else f"{currency} "
    return f"{sign}{amount:.6f}" if amount < 0.01 else f"{sign}{amount:.4f}"


def _filters(
    model: str | None,
    tenant: str | None,
    agent: str | None,
    run: str | None,
    since: str | None,
    errors: bool = False,
    text: str | None = None,
) -> Filters:
    return Filters(
        alias=model,
        tenant=tenant,
        agent=agent,
        run_id=run,
        since=parse_since(since),
        errors=errors,
        text=text,
    )


def _print_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=2, default=str))


@click.group("logs", invoke_without_command=True)
@click.option("-n", "--count", "limit", default=20, show_default=True, help="Calls to show.")
@click.option("-m", "--model", help="Only this alias.")
@click.option("--tenant", help="Only this tenant's calls.")
@click.option("--agent", help="Only this agent's calls.")
@click.option("--run", "run", help="Only the calls of this run id.")
@click.option("--since", help="Only calls since: 30m, 2h, 7d, 1w, or an ISO date.")
@click.option("--errors", is_flag=True, help="Only failed calls.")
@click.option("-q", "--query", "text", help="Full-text search over stored prompts and answers.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def logs_command(
    ctx: click.Context,
    limit: int,
    model: str | None,
    tenant: str | None,
    agent: str | None,
    run: str | None,
    since: str | None,
    errors: bool,
    text: str | None,
    as_json: bool,
) -> None:
    """The call log, newest first (`herd logs show ID` prints one call in full)."""
    if ctx.invoked_subcommand is not None:
        return
    if limit < 1:
        raise click.BadParameter("must be at least 1", param_hint="-n")
    filters = _filters(model, tenant, agent, run, since, errors, text)
    store = _open(ctx)
    try:
        if text and not _has_content(store):
            click.echo(
                "note: no prompts or answers are stored, so -q finds nothing — set "
                "[plugins.logs] content = true to keep them (docs/logs.md)",
                err=True,
            )
        rows = store.query(filters, limit)
    finally:
        store.close()
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no calls match")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for name in ("id", "time (UTC)", "model", "answered by", "tenant", "agent", "tokens"):
        table.add_column(name)
    table.add_column("latency", justify="right")
    table.add_column("cost", justify="right")
    table.add_column("outcome")
    for row in rows:
        answered = row["answered_by"] or "-"
        if row["fallback_from"]:
            answered += f" (fallback from {row['fallback_from']})"
        if row["outcome"] == "error":
            outcome = f"[red]error: {row['error_type']}[/red]"
        elif row["cache_tier"]:
            outcome = f"cache {row['cache_tier']} (saved {_money(row['saved'], row['currency'])})"
        else:
            outcome = "ok"
        table.add_row(
            str(row["id"]),
            _when(row["ts"]),
            row["alias"] or "-",
            answered,
            row["tenant"] or "-",
            row["agent"] or "-",
            f"{row['input_tokens'] or 0}+{row['output_tokens'] or 0}",
            f"{row['latency_s']:.2f}s" if row["latency_s"] is not None else "-",
            _money(row["cost"], row["currency"]) if row["outcome"] == "ok" else "-",
            outcome,
        )
    Console().print(table)


def _has_content(store: LogStore) -> bool:
    return store.db.execute("SELECT 1 FROM content LIMIT 1").fetchone() is not None


@logs_command.command("show")
@click.argument("call_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show_command(ctx: click.Context, call_id: int, as_json: bool) -> None:
    """Print one call in full: every field, and its prompt and answer when stored."""
    store = _open(ctx)
    try:
        row = store.get(call_id)
    finally:
        store.close()
    if row is None:
        from modelherd.errors import ConfigError

        raise ConfigError(f"no call with id {call_id} in the log — list ids with `herd logs`")
    if as_json:
        _print_json(row)
        return
    messages = row.pop("messages", None)
    answer = row.pop("answer", None)
    row["time (UTC)"] = _when(row.pop("ts"))
    for key, value in row.items():
        if value is not None:
            click.echo(f"{key:>18}: {value}")
    if messages is not None:
        click.echo("\n--- prompt ---")
        for message in messages:
            click.echo(f"[{message['role']}] {message['content']}")
    if answer is not None:
        click.echo("\n--- answer ---")
        click.echo(answer)
    if messages is None and answer is None:
        click.echo("\n(prompt and answer not stored: [plugins.logs] content = false)")


USAGE_FIELDS = (
    "calls",
    "input_tokens",
    "output_tokens",
    "cost",
    "currency",
    "unpriced_calls",
    "cache_hits",
    "cache_saved",
    "errors",
    "error_rate",
    "p50_s",
    "p95_s",
)


@click.command("usage")
@click.option(
    "--by",
    "group",
    type=click.Choice(sorted(GROUPS)),
    default="model",
    show_default=True,
    help="Group rows by this.",
)
@click.option("-m", "--model", help="Only this alias.")
@click.option("--tenant", help="Only this tenant's calls.")
@click.option("--agent", help="Only this agent's calls.")
@click.option("--run", "run", help="Only the calls of this run id.")
@click.option("--since", help="Only calls since: 30m, 2h, 7d, 1w, or an ISO date.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@click.pass_context
def usage_command(
    ctx: click.Context,
    group: str,
    model: str | None,
    tenant: str | None,
    agent: str | None,
    run: str | None,
    since: str | None,
    as_json: bool,
    as_csv: bool,
) -> None:
    """Calls, tokens, cost, cache savings, error rate and p50/p95 latency per group."""
    filters = _filters(model, tenant, agent, run, since)
    store = _open(ctx)
    try:
        rows = store.usage(group, filters)
    finally:
        store.close()
    if as_json:
        _print_json(rows)
        return
    if as_csv:
        import csv
        import sys

        out = csv.DictWriter(sys.stdout, fieldnames=[group, *USAGE_FIELDS], lineterminator="\n")
        out.writeheader()
        out.writerows(rows)
        return
    if not rows:
        click.echo("no calls match")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column(group)
    for name in ("calls", "tokens in", "tokens out", "cost", "cache hits", "saved", "errors"):
        table.add_column(name, justify="right")
    table.add_column("p50", justify="right")
    table.add_column("p95", justify="right")
    for row in rows:
        cost = _money(row["cost"], row["currency"])
        if row["unpriced_calls"]:
            cost += f" (+{row['unpriced_calls']} unpriced)"
        table.add_row(
            str(row[group]),
            str(row["calls"]),
            str(row["input_tokens"]),
            str(row["output_tokens"]),
            cost,
            str(row["cache_hits"]),
            _money(row["cache_saved"], row["currency"]),
            f"{row['errors']} ({row['error_rate']:.1%})",
            f"{row['p50_s']:.2f}s" if row["p50_s"] is not None else "-",
            f"{row['p95_s']:.2f}s" if row["p95_s"] is not None else "-",
        )
    Console().print(table)
