"""`herd doctor`: config, plugins, keys, the local model and each provider — each
problem with its fix. Live checks run concurrently, each bounded by a timeout."""

from __future__ import annotations

from typing import Any

from .errors import HerdError

Finding = dict[str, Any]


def _finding(area: str, level: str, message: str, fix: str = "") -> Finding:
    return {"area": area, "level": level, "message": message, "fix": fix}


def missing_provider(herd: Any, spec: Any) -> tuple[str, bool]:
    """(what to say about an alias whose provider is not registered, whether it is a
    config mistake). Unknown is a mistake ("did you mean" — what `herd chat` says);
    while some plugin is disabled or failed, the provider may be one of its, so it is
    reported as unavailable, not as a typo."""
    message: str = herd._unknown_provider_message(spec)
    blocked = [r for r in herd.plugin_records if r.status != "loaded"]
    named = any(r.name == spec.provider for r in blocked)
    return message, not blocked and not named


def run_doctor(state: Any, timeout: float) -> list[Finding]:
    from .cli import start_and_close

    findings: list[Finding] = []
    state.quiet_hook_failures = True  # they are findings here
    try:
        herd = state.herd()
    except HerdError as exc:
        findings.append(_finding("config", "error", exc.message))
        herd = state.herd_for_commands()
    else:
        profile = herd.config.active_profile or "none"
        findings.append(_finding("config", "ok", f"{herd.config.source} (profile: {profile})"))
    for skipped in getattr(state, "skipped", []):
        findings.append(
            _finding(
                "config",
                "warning",
                f"{skipped.why()}: ignored (using {skipped.instead})",
                f"review {skipped.shown}, then run `herd trust` to use it (docs/security.md)",
            )
        )
    try:
        start_and_close(herd)  # startup hooks run: a plugin failing there is a finding
    except HerdError as exc:  # a setting only checked at startup (e.g. an OTEL_* variable)
        findings.append(_finding("config", "error", exc.message))
    findings += _plugin_findings(herd)
    findings += _key_findings(herd)
    findings += _model_findings(herd, timeout)
    findings += _plugin_health(herd)
    return findings


def _plugin_health(herd: Any) -> list[Finding]:
    """Plugins that say how they are doing: a `doctor_findings(herd)` attribute (the
    audit log: writable, records lost)."""
    out: list[Finding] = []
    for plugin in list(herd.pm.get_plugins()):
        check = getattr(plugin, "doctor_findings", None)
        if not callable(check) or isinstance(plugin, type):
            continue
        try:
            out += list(check(herd))
        except Exception as exc:  # a broken check is a finding, not a crash
            name = herd.pm.get_name(plugin) or "?"
            out.append(_finding("plugins", "error", f"'{name}' doctor check failed: {exc}"))
    return out


def _plugin_findings(herd: Any) -> list[Finding]:
    herd.pm  # noqa: B018 - load plugins so their records exist
    herd.providers  # noqa: B018
    herd.agents  # noqa: B018
    out = []
    loaded = [r.name for r in herd.plugin_records if r.status == "loaded"]
    out.append(_finding("plugins", "ok", f"{len(loaded)} loaded: {', '.join(sorted(loaded))}"))
    for record in herd.plugin_records:
        dist = f" ({record.distribution} {record.version})" if record.distribution else ""
        if record.failed_hooks:
            for error in record.failed_hooks.values():
                out.append(
                    _finding(
                        "plugins",
                        "error",
                        f"'{record.name}'{dist} failed: {error}",
                        f'fix or uninstall it, or add "{record.name}" to [plugins] disable '
                        f"in plugins.toml (--strict makes this fatal)",
                    )
                )
        elif record.status == "failed":
            out.append(
                _finding(
                    "plugins",
                    "error",
                    f"'{record.name}'{dist} failed to load: {record.error}",
                    f'fix or uninstall it, or add "{record.name}" to [plugins] disable in plugins.toml',
                )
            )
    return out


def _key_findings(herd: Any) -> list[Finding]:
    out = []
    for name, cls in sorted(herd.providers.items()):
        if not cls.key_env_vars:
            continue
        standard = [v for v in cls.key_env_vars if herd.env.get(v)]
        legacy = [v for v in cls.legacy_key_env_vars if herd.env.get(v)]
        if standard:
            out.append(_finding("keys", "ok", f"{name}: {standard[0]} is set"))
        elif legacy:
            out.append(
                _finding(
                    "keys",
                    "warning",
                    f"{name}: using the old name {legacy[0]}",
                    f"rename it to {cls.key_env_vars[0]}",
                )
            )
        else:
            out.append(
                _finding(
                    "keys",
                    "warning",
                    f"{name}: {cls.key_env_vars[0]} is not set",
                    f"set {cls.key_env_vars[0]} in the environment or .env to use {name} models",
                )
            )
    return out


def _model_findings(herd: Any, timeout: float) -> list[Finding]:
    import anyio

    out: list[Finding] = []
    live: list[str] = []
    default = herd.config.herd.default_model
    for alias in sorted(herd.config.models):
        try:
            spec = herd.resolve(alias)
        except HerdError as exc:
            out.append(_finding(f"model {alias}", "error", exc.message))
            continue
        cls = herd.providers.get(spec.provider)
        level_if_bad = "error" if alias == default else "warning"
        if cls is None:
            message, mistake = missing_provider(herd, spec)
            fix = "" if mistake else "`herd plugins` shows which plugin is disabled or failed"
            out.append(
                _finding(f"model {alias}", "error" if mistake else level_if_bad, message, fix)
            )
            continue
        try:
            avail = cls.availability(spec, herd.env)
        except HerdError as exc:
            out.append(_finding(f"model {alias}", level_if_bad, exc.message))
            continue
        if not avail.ok:
            out.append(_finding(f"model {alias}", level_if_bad, avail.reason, avail.fix))
            continue
        live.append(alias)
    if live:
        out += anyio.run(_live_checks, herd, live, timeout, default)
    return out


async def _live_checks(
    herd: Any, aliases: list[str], timeout: float, default: str
) -> list[Finding]:
    import anyio

    results: dict[str, Finding] = {}

    async def check(alias: str) -> None:
        # a failing default is a problem; so is a model whose key is set (the user means
        # to use it: a 401 there is a rejected key, not an optional provider)
        level_if_bad = "error" if alias == default or _key_is_set(herd, alias) else "warning"
        try:
            with anyio.fail_after(timeout):
                health = await herd.get_model(alias).health()
        except TimeoutError:
            results[alias] = _finding(
                f"model {alias}",
                level_if_bad,
                f"no answer within {timeout:g}s",
                "check the server or network, or raise --timeout",
            )
            return
        except HerdError as exc:
            results[alias] = _finding(f"model {alias}", level_if_bad, exc.message)
            return
        if health.ok:
            results[alias] = _finding(f"model {alias}", "ok", health.detail or "reachable")
        else:
            results[alias] = _finding(f"model {alias}", level_if_bad, health.detail, health.fix)

    try:
        async with anyio.create_task_group() as tg:
            for alias in aliases:
                tg.start_soon(check, alias)
    finally:
        await herd.aclose()
    return [results[a] for a in aliases if a in results]


def _key_is_set(herd: Any, alias: str) -> bool:
    spec = herd.resolve(alias)
    cls = herd.providers.get(spec.provider)
    if cls is None:
        return False
    custom = spec.settings.get("api_key_env")
    names = (custom,) if custom else (*cls.key_env_vars, *cls.legacy_key_env_vars)
    return any(herd.env.get(name) for name in names if name)
