"""`herd`, the command line. Plugins add commands through `register_commands`.

Every command takes `--json` for scripts. Errors a user can cause print one line
(`error: …` with what to do) and exit 2 for configuration problems, 1 otherwise;
no traceback unless HERD_DEBUG=1. A plugin that breaks while adding its commands is
reported by `herd plugins` / `herd doctor` and the CLI goes on without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from .errors import ConfigError, HerdError

DEMO_NOTE = (
    "SmolLM2-135M (the embedded 'local' model) proves the pipeline offline; it has no "
    "judgment worth trusting."
)


class CliState:
    """What the group options chose; builds the Herd only when a command needs it."""

    def __init__(self, config_path: str | None, profile: str | None, strict: bool) -> None:
        self.config_path = config_path
        self.profile = profile
        self.strict = strict
        self._herd: Any = None
        self.config_error: ConfigError | None = None
        self._announced = False
        #: implicit files skipped as untrusted (core/trust.py), for `herd doctor`
        self.skipped: list[Any] = []
        #: set by commands that list hook failures themselves (plugins, doctor)
        self.quiet_hook_failures = False

    def herd(self) -> Any:
        if self._herd is None:
            from .config import load_config, load_env_checked
            from .kernel import Herd

            config = load_config(self.config_path, self.profile, announce=False)
            env, env_skipped = load_env_checked()
            self.skipped = [*config.skipped, *env_skipped]
            self._announce(self.skipped)
            herd = Herd(config, env=env, strict=self.strict)
            herd.pm  # noqa: B018 - load plugins now: every [plugins.x] table is checked
            self._herd = herd
        return self._herd

    def report_hook_failures(self) -> None:
        """At the end of a command: one warning line per plugin hook that raised while
        it ran (`herd plugins` / `herd doctor` list them; --strict makes them fatal)."""
        herd = self._herd
        if herd is None or self.quiet_hook_failures:
            return
        for record in herd.plugin_records:
            for hook, error in record.failed_hooks.items():
                if hook in _RUNTIME_HOOKS:
                    click.echo(
                        f"warning: plugin '{record.name}' failed: {error} — fix or disable "
                        f"it (`herd plugins` shows it; --strict makes it fatal)",
                        err=True,
                    )

    def _announce(self, skipped: list[Any]) -> None:
        """Say once per command, in one line, which implicit files were skipped."""
        if skipped and not self._announced:
            from .trust import skipped_line

            self._announced = True
            click.echo(f"note: {skipped_line(skipped)}", err=True)

    def herd_for_commands(self) -> Any:
        """A Herd for registering plugin commands, even when the config is broken."""
        try:
            return self.herd()
        except ConfigError as exc:
            from .config import HerdConfig
            from .kernel import Herd

            self.config_error = exc
            return Herd(HerdConfig(), env=dict(os.environ), strict=self.strict)


#: hooks that run while a command works (not at plugin load): a failure there is
#: news to the user of that command
_RUNTIME_HOOKS = frozenset({"startup", "after_call", "shutdown"})


class HerdGroup(click.Group):
    """Adds plugin commands lazily, after the group's own options are parsed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plugins_added = False

    def _add_plugin_commands(self, ctx: click.Context) -> None:
        if self._plugins_added:
            return
        self._plugins_added = True
        state = _state(ctx)
        herd = state.herd_for_commands()
        herd.call_each("register_commands", cli=self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _NO_HERD:  # they must work whatever the config holds
            return super().get_command(ctx, cmd_name)
        self._add_plugin_commands(ctx)
        return super().get_command(ctx, cmd_name)


#: core commands that never build a Herd (so never read the config they manage)
_NO_HERD = frozenset({"trust", "untrust"})


def _state(ctx: click.Context) -> CliState:
    root = ctx.find_root()
    if root.obj is None:
        params = root.params
        root.obj = CliState(
            params.get("config_path"), params.get("profile"), bool(params.get("strict"))
        )
    state: CliState = root.obj
    return state


def _herd(ctx: click.Context) -> Any:
    return _state(ctx).herd()


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _console() -> Any:
    from rich.console import Console

    return Console()


def make_cli() -> HerdGroup:
    """A fresh `herd` group: core commands now, plugin commands once options are parsed."""

    @click.group(cls=HerdGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(package_name="modelherd", prog_name="herd")
    @click.option("--config", "config_path", metavar="PATH", help="plugins.toml to use.")
    @click.option(
        "--profile", metavar="NAME", help="Profile from [profiles.NAME] (or HERD_PROFILE)."
    )
    @click.option("--strict", is_flag=True, help="Treat a plugin that fails to load as fatal.")
    @click.pass_context
    def group(
        ctx: click.Context, config_path: str | None, profile: str | None, strict: bool
    ) -> None:
        """modelherd: one layer for every model behind your agents."""
        if ctx.obj is None:  # resolving the command (plugin commands) may have made it
            ctx.obj = CliState(config_path, profile, strict)
        ctx.call_on_close(ctx.obj.report_hook_failures)

    assert isinstance(group, HerdGroup)
    from .trust_cli import trust_cmd, untrust_cmd

    for command in (plugins_cmd, models_cmd, chat_cmd, doctor_cmd, trust_cmd, untrust_cmd):
        group.add_command(command)
    group.add_command(RunGroup("run", help=RUN_HELP))
    return group


# ---- herd plugins --------------------------------------------------------------


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def plugins_cmd(ctx: click.Context, as_json: bool) -> None:
    """Installed plugins: name, version, hooks, load and startup errors."""
    state = _state(ctx)
    state.quiet_hook_failures = True
    herd = state.herd()
    herd.providers  # noqa: B018 - registration failures are recorded too
    herd.agents  # noqa: B018
    start_and_close(herd)  # a plugin whose startup raises is shown as failed
    records = sorted(herd.plugin_records, key=lambda r: r.name)
    if as_json:
        _print_json([vars(r) for r in records])
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="modelherd plugins")
    for column in ("name", "status", "version", "hooks / error"):
        table.add_column(column)
    for r in records:
        status = {"loaded": "[green]loaded", "disabled": "[dim]disabled", "failed": "[red]failed"}[
            r.status
        ]
        detail = f"[red]{escape(r.error)}" if r.error else ", ".join(r.hooks)
        table.add_row(r.name, status, r.version or "-", detail)
    _console().print(table)


def start_and_close(herd: Any, timeout: float = 10.0) -> None:
    """Run the plugins' startup hooks once (then close), so that their failures are
    recorded; bounded, since a startup may open connections."""
    import anyio

    async def probe() -> None:
        try:
            with anyio.move_on_after(timeout):
                await herd.start()
        finally:
            await herd.aclose()

    anyio.run(probe)


# ---- herd models ---------------------------------------------------------------


def _model_rows(herd: Any) -> list[dict[str, Any]]:
    rows = []
    for alias in sorted(herd.config.models):
        spec = herd.resolve(alias)
        cls = herd.providers.get(spec.provider)
        row: dict[str, Any] = {
            "alias": alias,
            "provider": spec.provider,
            "model": spec.model,
            "default": alias == herd.config.herd.default_model,
            "fallbacks": spec.fallbacks,
        }
        if cls is None:
            from .doctor import missing_provider

            message, mistake = missing_provider(herd, spec)
            row.update(available=False, reason=message, fix="", config_error=mistake)
        else:
            try:
                avail = cls.availability(spec, herd.env)
                row.update(available=avail.ok, reason=avail.reason, fix=avail.fix)
            except HerdError as exc:
                row.update(available=False, reason=exc.message, fix="")
        rows.append(row)
    return rows


async def _check_all(herd: Any, aliases: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    import anyio

    results: dict[str, dict[str, Any]] = {}

    async def check(alias: str) -> None:
        try:
            with anyio.fail_after(timeout):
                health = await herd.get_model(alias).health()
            results[alias] = health.model_dump()
        except TimeoutError:
            results[alias] = {"ok": False, "detail": f"no answer within {timeout:g}s", "fix": ""}
        except HerdError as exc:
            results[alias] = {"ok": False, "detail": exc.message, "fix": ""}

    async with anyio.create_task_group() as tg:
        for alias in aliases:
            tg.start_soon(check, alias)
    await herd.aclose()
    return results


@click.command("models")
@click.option("--check", is_flag=True, help="Also run live health checks (network), concurrently.")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds per health check.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def models_cmd(ctx: click.Context, check: bool, timeout: float, as_json: bool) -> None:
    """Configured model aliases: provider, availability and why not."""
    import anyio

    herd = _herd(ctx)
    rows = _model_rows(herd)
    if check:
        live = anyio.run(_check_all, herd, [r["alias"] for r in rows if r["available"]], timeout)
        for row in rows:
            row["health"] = live.get(row["alias"])
    if as_json:
        _print_json(
            {"profile": herd.config.active_profile, "config": herd.config.source, "models": rows}
        )
        _exit_on_config_errors(rows)
        return
    from rich.markup import escape
    from rich.table import Table

    profile = herd.config.active_profile or "none"
    from rich import box

    table = Table(
        title=f"models — config: {herd.config.source}, profile: {profile}",
        box=box.SIMPLE_HEAD,
    )
    # fold, never "…": at 80 columns the variable name the user must set stays whole
    table.add_column("alias", overflow="fold", max_width=18)
    table.add_column("provider/model", overflow="fold", max_width=26)
    table.add_column("ok", no_wrap=True)
    table.add_column("why not / fix", overflow="fold", min_width=24, ratio=1)
    if check:
        table.add_column("live check")
    for row in rows:
        name = row["alias"] + (" (default)" if row["default"] else "")
        ok = "[green]yes" if row["available"] else "[red]no"
        why = escape(_why_not(row.get("reason") or "", row.get("fix") or ""))
        cells = [name, f"{row['provider']}/{row['model']}", ok, why]
        if check:
            cells.append(_health_cell(row.get("health")))
        table.add_row(*cells)
    _console().print(table)
    _exit_on_config_errors(rows)


def _exit_on_config_errors(rows: list[dict[str, Any]]) -> None:
    """An alias naming an unknown provider is a config error: say it (as `herd chat`
    would) after the table, and exit 2."""
    for row in rows:
        if row.get("config_error"):
            raise ConfigError(row["reason"])


def _why_not(reason: str, fix: str) -> str:
    """'X is not set — set X in the environment or .env' says X twice; once is enough."""
    if reason.endswith(" is not set") and fix.startswith(f"set {reason[:-11]} "):
        return f"{fix} (not set)"
    return " — ".join(x for x in (reason, fix) if x)


def _health_cell(health: dict[str, Any] | None) -> str:
    """The live-check column: ok with its detail, or the failure with its fix."""
    from rich.markup import escape

    if health is None:
        return "-"
    detail = escape(health.get("detail") or "")
    if health["ok"]:
        return f"[green]ok[/green] {detail}".strip()
    fix = escape(health.get("fix") or "")
    return f"[red]{detail}[/red]" + (f" — {fix}" if fix else "")


# ---- herd chat -----------------------------------------------------------------


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(
                f"'{pair}' is not KEY=VALUE — e.g. -o temperature=0.2", param_hint="-o"
            )
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


@click.command("chat")
@click.argument("prompt", required=False)
@click.option(
    "-m", "--model", "alias", help="Model alias or provider/model (default: [herd] default_model)."
)
@click.option("-s", "--system", help="System prompt.")
@click.option(
    "-o",
    "--option",
    "option_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Model option (repeatable).",
)
@click.option("--temperature", type=float)
@click.option("--max-tokens", type=int)
@click.option("--seed", type=int)
@click.option("--tenant", help="Tenant the call is made for.")
@click.option("--no-stream", is_flag=True, help="Wait for the whole answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the full response as JSON.")
@click.option(
    "-v", "--verbose", is_flag=True, help="Print the call's stats on stderr (even when piped)."
)
@click.option(
    "--schema",
    metavar="JSON|FILE",
    help="JSON schema the answer must follow (inline or a file); prints the parsed JSON.",
)
@click.pass_context
def chat_cmd(
    ctx: click.Context,
    prompt: str | None,
    alias: str | None,
    system: str | None,
    option_pairs: tuple[str, ...],
    temperature: float | None,
    max_tokens: int | None,
    seed: int | None,
    tenant: str | None,
    no_stream: bool,
    as_json: bool,
    verbose: bool,
    schema: str | None,
) -> None:
    """Ask a model; the answer streams to stdout. PROMPT may also come on stdin (both:
    the piped text, then the prompt)."""
    import anyio

    piped = _piped_stdin()
    if prompt is None:
        if piped is None:
            raise click.UsageError('give a prompt: herd chat "your question" (or pipe it on stdin)')
        prompt = piped
    elif piped and piped.strip():  # `echo DATA | herd chat "summarize"`: both, like llm
        prompt = f"{piped.rstrip()}\n\n{prompt}"
    if not prompt.strip():
        raise click.UsageError('the prompt is empty — herd chat "your question"')
    options = _parse_options(option_pairs)
    for key, value in (("temperature", temperature), ("max_tokens", max_tokens), ("seed", seed)):
        if value is not None:
            options[key] = value
    if schema is not None:
        options["response_format"] = _load_schema(schema)
        no_stream = True
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    herd = _herd(ctx)

    async def run() -> Any:
        try:
            if as_json or no_stream:
                return await herd.chat(alias, messages, tenant=tenant, **options)
            final = None
            async for item in herd.stream(alias, messages, tenant=tenant, **options):
                if isinstance(item, str):
                    sys.stdout.write(item)
                    sys.stdout.flush()
                else:
                    final = item
            sys.stdout.write("\n")
            return final
        finally:
            await herd.aclose()

    response = anyio.run(run)
    if as_json:
        _print_json(response.model_dump())
        return
    if schema is not None:
        _print_json(_parsed_answer(response.content))
    elif no_stream:
        click.echo(response.content)
    if verbose or sys.stderr.isatty():
        click.echo(click.style(stats_line(response), dim=True), err=True)


def _load_schema(text: str) -> dict[str, Any]:
    """`--schema`: inline JSON, or the path of a JSON file."""
    from pathlib import Path

    source = text
    if not text.lstrip().startswith("{"):
        try:
            source = Path(text).expanduser().read_text()
        except OSError as exc:
            raise ConfigError(
                f"--schema {text!r} is neither inline JSON nor a readable file "
                f'({exc.strerror or exc}) — pass \'{{"type": "object", …}}\' or a .json path'
            ) from None
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--schema is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise ConfigError("--schema must be a JSON object (a JSON schema)")
    return value


def _parsed_answer(content: str) -> Any:
    """The answer to a `--schema` call, parsed; an answer that is not JSON is an error."""
    try:
        return json.loads(content)
    except json.JSONDecodeError:
        from .errors import BadResponseError

        raise BadResponseError(
            f"the answer is not the JSON the schema asked for ({content[:60]!r}) — try "
            f"again, raise --max-tokens, or use a model that supports structured output"
        ) from None


def _piped_stdin() -> str | None:
    """What was piped or redirected into stdin, or None when nothing was (a terminal, or
    an inherited device such as /dev/null) — never wait on a terminal."""
    import stat

    if sys.stdin is None or sys.stdin.isatty():
        return None
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):  # no real file descriptor (an embedding host, a test)
        mode = stat.S_IFIFO
    if stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode):
        try:
            return sys.stdin.read()
        except OSError:  # a stand-in stdin that refuses reads
            return None
    return None


def stats_line(response: Any) -> str:
    """What happened, like `ollama run --verbose`: who answered, cache, tokens, speed, cost."""
    usage = response.usage
    parts = [f"{response.alias} · {response.provider}/{response.model}"]
    if response.fallback_from:
        parts.append(f"fallback from {response.fallback_from}")
    parts.append(f"cache {response.cache_tier}" if response.cache_tier else "cache miss")
    parts.append(f"{usage.input_tokens} in / {usage.output_tokens} out tokens")
    if response.latency_s > 0 and not response.cache_tier:
        parts.append(f"{usage.output_tokens / response.latency_s:.1f} tok/s")
    parts.append(f"{response.latency_s:.2f}s")
    cost = usage.cost
    if cost is not None:
        if cost.amount is None:
            parts.append("cost unknown (no price: docs/cost.md)")
        elif response.cache_tier:
            parts.append(f"cost 0 (saved {_money(cost.saved, cost.currency)})")
        else:
            parts.append(f"cost {_money(cost.amount, cost.currency)}")
    return "[" + " · ".join(parts) + "]"


def _money(amount: float, currency: str) -> str:
    text = f"{amount:.6f}" if amount < 0.01 else f"{amount:.4f}"
    return f"${text}" if currency == "USD" else f"{text} {currency}"


# ---- herd doctor ---------------------------------------------------------------


@click.command("doctor")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds per live check.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def doctor_cmd(ctx: click.Context, timeout: float, as_json: bool) -> None:
    """Check config, plugins, keys, the local model and each provider; say how to fix."""
    from .doctor import run_doctor

    state = _state(ctx)
    findings = run_doctor(state, timeout)
    problems = [f for f in findings if f["level"] == "error"]
    if as_json:
        _print_json(findings)
    else:
        console = _console()
        from rich.markup import escape

        marks = {"ok": "[green]✓", "warning": "[yellow]![/yellow]", "error": "[red]✗"}
        for f in findings:
            line = f"{marks[f['level']]} [bold]{escape(f['area'])}[/bold]: {escape(f['message'])}"
            if f.get("fix"):
                line += f"\n    [dim]fix:[/dim] {escape(f['fix'])}"
            console.print(line, highlight=False)
        warnings = sum(1 for f in findings if f["level"] == "warning")
        summary = f"\n{len(problems)} problem(s)" if problems else "\n[green]no problems[/green]"
        if warnings:
            summary += f", {warnings} warning(s) (things you may not use; see each fix)"
        console.print(summary, highlight=False)
    if any(f["area"] == "config" for f in problems):
        ctx.exit(2)  # the config itself is wrong: the exit code every command uses for it
    if problems:
        ctx.exit(1)


# ---- herd run ------------------------------------------------------------------


class RunGroup(click.Group):
    """`herd run AGENT`: agents add their own subcommand; any other registered agent
    gets a generic one (`--set key=value`, extra arguments passed through)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        with contextlib.suppress(HerdError):
            names |= set(_herd(ctx).agents)
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        if cmd_name in _herd(ctx).agents:
            return _generic_agent_command(cmd_name)
        return None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and self.get_command(ctx, name) is None:
            agents = sorted(_herd(ctx).agents)
            import difflib

            close = difflib.get_close_matches(name, agents, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise click.UsageError(
                f"no agent named '{name}' — {hint}installed agents: {', '.join(agents) or 'none'}"
            )
        return super().resolve_command(ctx, args)


def _generic_agent_command(name: str) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @click.option("--set", "pairs", multiple=True, metavar="KEY=VALUE", help="Agent setting.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def run_agent(
        ctx: click.Context, args: tuple[str, ...], pairs: tuple[str, ...], as_json: bool
    ) -> None:
        import anyio

        herd = _herd(ctx)
        agent = herd.agent(name, **_parse_options(pairs))

        async def go() -> Any:
            try:
                return await agent.run(args=list(args))
            finally:
                await herd.aclose()

        result = anyio.run(go)
        if hasattr(result, "model_dump"):
            result = result.model_dump()
        if as_json or not isinstance(result, str):
            _print_json(result)
        else:
            click.echo(result)

    run_agent.help = f"Run the '{name}' agent."
    return run_agent


RUN_HELP = "Run an agent: `herd run AGENT …` (see `herd run --help` for the installed ones)."


# ---- entry point ---------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: one line per user error, exit 2 for config, 1 otherwise."""
    debug = os.environ.get("HERD_DEBUG") == "1"
    run: Callable[..., Any] = make_cli().main
    try:
        # with standalone_mode=False click returns ctx.exit()'s code instead of exiting
        code = run(args=argv, prog_name="herd", standalone_mode=False)
        if isinstance(code, int) and code != 0:
            raise SystemExit(code)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except HerdError as exc:
        if debug:
            raise
        click.echo(f"error: {exc.message}", err=True)
        raise SystemExit(exc.exit_code) from None
    except ExceptionGroup as group:
        first = group.exceptions[0]
        if isinstance(first, HerdError) and not debug:
            click.echo(f"error: {first.message}", err=True)
            raise SystemExit(first.exit_code) from None
        raise


#: the `herd` group (a fresh one per `main()` call; this one is for imports and docs)
cli = make_cli()
if __name__ == "__main__":
    main()
