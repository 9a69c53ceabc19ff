"""The agents' CLI commands: `herd swarm`, `herd run trading | rbi | copybot`.

Registered by each agent module's `register_commands` hook. rich is imported inside
the functions; every command takes `--json`. Each decision made by the embedded
model is printed with the footer that says it has no judgment.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from typing import Any

import click
from modelherd.errors import ConfigError

STATUS_STYLE = {
    "ok": "green",
    "pending": "dim",
    "unparsed": "yellow",
    "error": "red",
    "timeout": "red",
    "cancelled": "magenta",
}


def herd_from(ctx: click.Context) -> Any:
    """The Herd the `herd` group built (its --config / --profile), or a default one."""
    getter = getattr(ctx.find_root().obj, "herd", None)
    if callable(getter):
        return getter()
    from modelherd import Herd

    return Herd()


def _split(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _price(value: float) -> str:
    return f"{value:,.2f}" if value >= 1 else f"{value:.6g}"


# ---- herd swarm ------------------------------------------------------------------


def member_table(members: list[Any], title: str = "members") -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("member", "status", "answer", "conf", "latency", "tokens", "error"):
        table.add_column(column, overflow="fold")
    for m in members:
        style = STATUS_STYLE.get(m.status, "")
        table.add_row(
            m.name,
            f"[{style}]{m.status}[/]",
            m.label or "",
            _fmt(m.confidence),
            "" if m.latency_s is None else f"{m.latency_s:.2f}s",
            str(m.output_tokens or ""),
            (m.error or "")[:80],
        )
    return table


@click.command("swarm")
@click.argument("question")
@click.option(
    "-m",
    "--model",
    "models",
    multiple=True,
    metavar="ALIAS[,ALIAS]",
    help="Member aliases (default: [agents.swarm] members, else 'local').",
)
@click.option(
    "-n", "--samples", type=click.IntRange(1, 256), help="Answers per alias (different seeds)."
)
@click.option("--strategy", type=click.Choice(["vote", "weighted", "judge"]))
@click.option("--judge", metavar="ALIAS", help="Judge alias for --strategy judge.")
@click.option("--labels", metavar="A,B,…", help="Closed set of answers to vote over.")
@click.option("--quorum", type=click.IntRange(1), help="Stop once this many members agree.")
@click.option("--timeout", "member_timeout", type=float, help="Seconds per member.")
@click.option("--deadline", type=float, help="Seconds for the whole swarm.")
@click.option("--max-tokens", type=click.IntRange(1))
@click.option("--no-save", is_flag=True, help="Do not save the result JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def swarm_command(
    ctx: click.Context,
    question: str,
    models: tuple[str, ...],
    samples: int | None,
    strategy: str | None,
    judge: str | None,
    labels: str | None,
    quorum: int | None,
    member_timeout: float | None,
    deadline: float | None,
    max_tokens: int | None,
    no_save: bool,
    as_json: bool,
) -> None:
    """Ask several models (or one model several times) and print the consensus."""
    import anyio

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "samples": samples,
            "strategy": strategy,
            "judge": judge,
            "quorum": quorum,
            "member_timeout": member_timeout,
            "deadline": deadline,
            "max_tokens": max_tokens,
        }.items()
        if v is not None
    }
    if models:
        overrides["members"] = _split(models)
    if judge and not strategy:  # --judge ALIAS alone means: let that model judge
        overrides["strategy"] = "judge"
    if no_save:
        overrides["save"] = False
    label_list = _split((labels,)) if labels else None
    herd = herd_from(ctx)
    agent = herd.agent("swarm", **overrides)

    async def go(update: Callable[[list[Any]], None] | None) -> Any:
        try:
            return await agent.ask(question, labels=label_list, on_update=update)
        finally:
            await herd.aclose()

    agent.check_aliases()  # a typo in -m / --judge: one error line before anything runs
    if as_json:
        result = anyio.run(go, None)
        _echo_json(result.model_dump(mode="json"))
    else:
        from rich.live import Live

        console = _console()
        with Live(console=console, refresh_per_second=8, transient=True) as live:
            result = anyio.run(go, lambda ms: live.update(member_table(ms, "swarm: answering…")))
        console.print(member_table(result.members))
        print_consensus(console, result)
    _exit_if_nobody_answered(ctx, result)


def _exit_if_nobody_answered(ctx: click.Context, result: Any) -> None:
    """Exit 1 when no member gave a usable answer: a script must not read 'no consensus
    from 0 answers' as a result."""
    if any(m.status == "ok" for m in result.members):
        return
    statuses = sorted({m.status for m in result.members})
    click.echo(
        f"error: none of the {len(result.members)} swarm members gave a usable answer "
        f"({', '.join(statuses)}) — see the error column, or `herd models --check`",
        err=True,
    )
    ctx.exit(1)


def print_consensus(console: Any, result: Any) -> None:
    c = result.consensus
    votes = ", ".join(f"{k} {v:g}" for k, v in sorted(result.votes.items(), key=lambda kv: -kv[1]))
    if c.label is None:
        console.print(f"[bold yellow]no consensus[/] — {c.reason}  (votes: {votes or 'none'})")
    else:
        console.print(
            f"[bold]consensus: {c.label}[/]  by {c.decided_by}, agreement "
            f"{c.agreement:.0%}, confidence {_fmt(c.confidence)}  (votes: {votes})"
        )
    if result.judge is not None and result.judge.status != "ok":
        console.print(f"[yellow]judge {result.judge.alias} failed:[/] {result.judge.error}")
    failed = len(result.failed)
    console.print(
        f"{len(result.members) - failed}/{len(result.members)} members answered in "
        f"{result.elapsed_s:.2f}s, {result.output_tokens} tokens"
        + (f" · saved {result.path}" if result.path else "")
    )
    console.print(f"[dim]{result.note}[/]")


# ---- herd run trading ------------------------------------------------------------

_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_interval(text: str) -> float:
    """'15m' -> 900.0; '30s', '1h', '1d', or plain seconds."""
    match = _INTERVAL.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"--every '{text}' is not an interval — use e.g. 30s, 15m, 1h or 1d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def print_trading(console: Any, report: Any) -> None:
    from rich.table import Table

    table = Table(
        title=f"paper trading · {report.timeframe} candles · {report.at}", title_justify="left"
    )
    for column in ("symbol", "price", "votes", "conf", "decision", "why"):
        table.add_column(column, overflow="fold")
    for d in report.decisions:
        votes = ", ".join(f"{k} {v:g}" for k, v in d.votes.items()) or "none"
        stopped = sum(1 for m in d.members if m["status"] == "cancelled")
        failed = sum(1 for m in d.members if m["status"] not in ("ok", "cancelled"))
        extra = [f"{failed} failed"] * bool(failed) + [f"{stopped} stopped early"] * bool(stopped)
        if extra:
            votes += f" ({', '.join(extra)})"
        style = {"BUY": "green", "SELL": "red"}.get(d.action, "")
        filled = f" ({d.fill.side} {d.fill.qty:.4g})" if d.fill else ""
        table.add_row(
            d.symbol,
            _price(d.price),
            votes,
            _fmt(d.confidence),
            f"[bold {style}]{d.action}[/]{filled}",
            d.reason,
        )
    console.print(table)
    for fill in report.exits:
        console.print(
            f"exit: {fill.side} {fill.symbol} {fill.qty:.6g} @ {_price(fill.price)} ({fill.reason})"
        )
    p = report.portfolio
    console.print(
        f"portfolio '{p['name']}': equity {p['equity']:,.2f} (cash {p['cash']:,.2f}, "
        f"in positions {p['exposure']:,.2f}, P&L {p['pnl_pct']:+.2f}%)"
    )
    if report.risk is not None:
        r = report.risk
        state = "within limits" if not r.breaches else "; ".join(r.breaches) + f" -> {r.action}"
        console.print(f"risk: {state}" + (f" [red]({r.error})[/]" if r.error else ""))
    console.print(f"journal: {report.journal}")
    console.print(f"[dim]{report.note}[/]")


@click.command("trading")
@click.option("--symbols", metavar="BTC,ETH", help="Symbols (default: [agents.trading] symbols).")
@click.option("--once", is_flag=True, help="One round, then exit (the default).")
@click.option("--every", metavar="15m", help="Run a round every interval until Ctrl-C.")
@click.option("--rounds", type=click.IntRange(1), help="With --every: stop after N rounds.")
@click.option(
    "-m",
    "--model",
    "models",
    multiple=True,
    metavar="ALIAS[,ALIAS]",
    help="Deciding model(s); several = a swarm.",
)
@click.option("-n", "--samples", type=click.IntRange(1, 64), help="Answers per model (seeds).")
@click.option("--timeframe", help="Candle timeframe (1d, 1h …).")
@click.option("--live", is_flag=True, help="Send real orders (needs an execution plugin).")
@click.option("--json", "as_json", is_flag=True, help="Print each round as JSON.")
@click.pass_context
def trading_command(
    ctx: click.Context,
    symbols: str | None,
    once: bool,
    every: str | None,
    rounds: int | None,
    models: tuple[str, ...],
    samples: int | None,
    timeframe: str | None,
    live: bool,
    as_json: bool,
) -> None:
    """Decide BUY / SELL / NOTHING per symbol and paper trade (offline on sample data)."""
    import anyio

    if once and every:
        raise click.UsageError("pass --once or --every, not both")
    interval = parse_interval(every) if every else None
    overrides: dict[str, Any] = {}
    if models:
        overrides["models"] = _split(models)
    if samples:
        overrides["samples"] = samples
    if timeframe:
        overrides["timeframe"] = timeframe
    herd = herd_from(ctx)
    agent = herd.agent("trading", **overrides)
    symbol_list = [s.upper() for s in _split((symbols,))] if symbols else agent.settings.symbols
    if live:
        anyio.run(lambda: agent.run(symbols=symbol_list, live=True))
    console = _console()

    def show(report: Any) -> None:
        if as_json:
            _echo_json(report.model_dump(mode="json"))
        else:
            print_trading(console, report)

    async def go() -> None:
        try:
            if interval is None:
                show(await agent.round(symbol_list))
                return
            await _loop(agent, symbol_list, interval, rounds, show)
        finally:
            await herd.aclose()

    anyio.run(go)


async def _loop(
    agent: Any, symbols: list[str], interval: float, rounds: int | None, show: Callable[[Any], None]
) -> None:
    """Rounds every `interval` s. First Ctrl-C: finish this round, then stop; second: abort."""
    import anyio

    stop = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    if stop.is_set():
                        click.echo("aborting", err=True)
                        tg.cancel_scope.cancel()
                        return
                    stop.set()
                    click.echo("stopping after this round (Ctrl-C again to abort)", err=True)

        tg.start_soon(watch)
        done = 0
        while not stop.is_set():
            show(await agent.round(symbols))
            done += 1
            if rounds is not None and done >= rounds:
                break
            with anyio.move_on_after(interval):
                await stop.wait()
        click.echo(f"stopped after {done} round(s); portfolio and journal are saved", err=True)
        tg.cancel_scope.cancel()


# ---- herd run rbi ----------------------------------------------------------------


@click.command("rbi")
@click.argument("idea")
@click.option("--rounds", "max_rounds", type=click.IntRange(1, 20), help="Debug rounds at most.")
@click.option("-m", "--model", "model", metavar="ALIAS", help="Model for all three steps.")
@click.option("--force", is_flag=True, help="Run again even if this idea was done before.")
@click.option(
    "--unsafe-no-jail",
    is_flag=True,
    help="Run the model's code WITHOUT the bubblewrap jail: it can read and write your files.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def rbi_command(
    ctx: click.Context,
    idea: str,
    max_rounds: int | None,
    model: str | None,
    force: bool,
    unsafe_no_jail: bool,
    as_json: bool,
) -> None:
    """Research an idea (text or a file), write backtesting.py code, run and debug it.

    Exits 1 when no working code came out of the rounds."""
    import anyio

    overrides: dict[str, Any] = {}
    if max_rounds:
        overrides["max_rounds"] = max_rounds
    if model:
        overrides.update(research_model=model, code_model=model, debug_model=model)
    herd = herd_from(ctx)
    agent = herd.agent("rbi", **overrides)

    async def go() -> Any:
        try:
            return await agent.run(idea=idea, force=force, unsafe_no_jail=unsafe_no_jail)
        finally:
            await herd.aclose()

    result = anyio.run(go)
    if as_json:
        _echo_json(result.model_dump(mode="json"))
        if result.status == "failed":
            ctx.exit(1)
        return
    console = _console()
    from rich.table import Table

    table = Table(
        title=f"rbi · {result.spec.get('name', 'strategy') if result.spec else 'idea'}",
        title_justify="left",
    )
    for column in ("round", "model", "ok", "error"):
        table.add_column(column, overflow="fold")
    for r in result.rounds:
        last = (r.error or "").strip().splitlines()[-1:] or [""]
        table.add_row(str(r.round), r.model, "yes" if r.ok else "no", last[0][:160])
    console.print(table)
    if result.status == "duplicate":
        console.print(f"already researched (idea {result.idea_hash}); --force to run again")
    if result.stats:
        st = result.stats
        console.print(
            f"[bold green]backtest ok[/]: return {st.get('return_pct')}%, Sharpe "
            f"{st.get('sharpe')}, max drawdown {st.get('max_drawdown_pct')}%, "
            f"trades {st.get('trades')}"
        )
    else:
        console.print(f"[bold yellow]{result.status}[/]: {result.reason}")
    console.print(f"code and stats: {result.folder}")
    console.print(f"[dim]sandbox: {result.sandbox}[/]")
    console.print(f"[dim]{result.note}[/]")
    if result.status == "failed":
        ctx.exit(1)


# ---- herd run copybot ------------------------------------------------------------


@click.command("copybot")
@click.option(
    "--positions",
    "positions_file",
    metavar="FILE",
    help="JSON of the tracked portfolio (default: [agents.copybot] source).",
)
@click.option("-m", "--model", "models", multiple=True, metavar="ALIAS[,ALIAS]")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def copybot_command(
    ctx: click.Context, positions_file: str | None, models: tuple[str, ...], as_json: bool
) -> None:
    """Ask the model(s) whether to mirror each position of a tracked portfolio."""
    import anyio

    overrides: dict[str, Any] = {}
    if positions_file:
        overrides["source"] = positions_file
    if models:
        overrides["models"] = _split(models)
    herd = herd_from(ctx)
    agent = herd.agent("copybot", **overrides)

    async def go() -> Any:
        try:
            return await agent.run()
        finally:
            await herd.aclose()

    report = anyio.run(go)
    if as_json:
        _echo_json(report.model_dump(mode="json"))
        return
    console = _console()
    from rich.table import Table

    table = Table(title=f"copybot · following {report.tracked} · paper", title_justify="left")
    for column in ("symbol", "tracked", "models said", "conf", "decision", "size", "why"):
        table.add_column(column, overflow="fold")
    for d in report.decisions:
        table.add_row(
            d.symbol,
            f"{d.tracked_weight:.0%}",
            d.model_action or "no consensus",
            _fmt(d.confidence),
            d.action,
            f"{d.notional:,.2f}" if d.notional else "",
            d.reason,
        )
    console.print(table)
    p = report.portfolio
    console.print(f"portfolio '{p['name']}': equity {p['equity']:,.2f} (P&L {p['pnl_pct']:+.2f}%)")
    console.print(f"journal: {report.journal}")
    console.print(f"[dim]{report.note}[/]")
