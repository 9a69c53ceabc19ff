"""Plugin discovery: one path (the `modelherd` entry-point group) for ours and theirs.

A plugin is blocked *before* it is imported when `[plugins] disable` names it or when
`HERD_PLUGINS` (a comma-separated allowlist) leaves it out; a name there that is no
installed plugin is a ConfigError ("did you mean"). A plugin that fails to import or
register is recorded with its error and the rest keep working; with `strict=True` the
first failure raises `PluginLoadError`.

Once loaded, every `[plugins.<name>]` table is checked against the schema its plugin
declares (`register_settings`), so a typo is one error line on every command instead
of a plugin silently switched off; a table naming no installed plugin is an error too.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import FunctionType, ModuleType
from typing import TYPE_CHECKING, Any, Literal, cast

import pluggy

from . import hookspecs
from .errors import ConfigError, PluginLoadError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .config import HerdConfig

GROUP = "modelherd"

Status = Literal["loaded", "disabled", "failed"]


@dataclass
class PluginRecord:
    """What `herd plugins` shows for one entry point."""

    name: str
    module: str
    distribution: str = ""
    version: str = ""
    status: Status = "loaded"
    error: str = ""
    hooks: list[str] = field(default_factory=list)
    #: hook name -> the error it raised in this process (startup, after_call …)
    failed_hooks: dict[str, str] = field(default_factory=dict)


_ABSENT = object()


class HerdPluginManager(pluggy.PluginManager):
    """pluggy's manager, skipping at once what in a module cannot be a hook.

    pluggy looks at every name in a plugin module (`dir(plugin)`) with
    `inspect.getattr_static`, ~50 k instructions a name; the entry modules hold ~800
    names, ~35 M instructions at every start. A module's names are its `__dict__`, and
    pluggy takes a hook only from a function, method, staticmethod or classmethod there
    that carries its marker (`modelherd_impl`, `modelherd_spec`), so a constant, class,
    imported module or unmarked function is skipped before that lookup; anything else
    gets pluggy's own check.
    """

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> pluggy.HookimplOpts | None:
        if _never_a_hook(plugin, name, f"{self.project_name}_impl"):
            return None
        return super().parse_hookimpl_opts(plugin, name)

    def parse_hookspec_opts(self, module_or_class: Any, name: str) -> pluggy.HookspecOpts | None:
        if _never_a_hook(module_or_class, name, f"{self.project_name}_spec"):
            return None
        return super().parse_hookspec_opts(module_or_class, name)


def _never_a_hook(namespace: Any, name: str, marker: str) -> bool:
    if not isinstance(namespace, ModuleType):
        return False
    value = namespace.__dict__.get(name, _ABSENT)
    if value is _ABSENT:
        return False
    if isinstance(value, FunctionType):  # pluggy reads the marker off the function itself
        return not hasattr(value, marker)
    # pluggy takes any routine (a compiled extension's function too): those get its check
    return not (inspect.isroutine(value) or isinstance(value, (staticmethod, classmethod)))


def new_plugin_manager() -> pluggy.PluginManager:
    pm = HerdPluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    # historic: every plugin registered from now on that adds its family's hookspecs
    # (agents/hookspecs.py) is called at registration, before anyone calls those hooks
    pm.hook.add_hookspecs.call_historic(kwargs={"pluginmanager": pm})
    if os.environ.get("HERD_TRACE_HOOKS") == "1":
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(f"[herd hooks] {msg}"))
        pm.enable_tracing()
    return pm


def _allowlist(config_allow: list[str] | None) -> tuple[set[str] | None, str]:
    """(the allowlist, where it came from) — HERD_PLUGINS wins over [herd] allow_plugins."""
    env = os.environ.get("HERD_PLUGINS")
    if env is not None:
        return {p.strip() for p in env.split(",") if p.strip()}, "HERD_PLUGINS"
    if config_allow is not None:
        return set(config_allow), "[herd] allow_plugins"
    return None, ""


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean '{close[0]}'?" if close else f"installed: {', '.join(sorted(known))}"


def check_plugin_names(
    names: set[str], known: list[str], where: str, fix: str = "see `herd plugins`"
) -> None:
    """A name in disable / HERD_PLUGINS that no installed plugin has is a typo, and the
    plugin meant stays on (or off): one ConfigError line with the closest name."""
    for name in sorted(names - set(known)):
        raise ConfigError(
            f"{where} names '{name}', which is not an installed plugin — "
            f"{_did_you_mean(name, known)} ({fix})"
        )


def _short_error(exc: BaseException) -> str:
    # the innermost frame of the plugin's own code, not importlib's machinery
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "<frozen" not in f.filename]
    frame = frames[-1] if frames else None
    where = f" ({frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def load_entry_point_plugins(
    pm: pluggy.PluginManager,
    disabled: set[str],
    allow: list[str] | None = None,
    strict: bool = False,
    eps: list[EntryPoint] | None = None,
    source: str = "plugins.toml",
) -> list[PluginRecord]:
    """Import and register every allowed plugin in the group; return one record each."""
    allowed, allow_where = _allowlist(allow)
    records: list[PluginRecord] = []
    found = eps if eps is not None else list(entry_points(group=GROUP))
    known = sorted({ep.name for ep in found})
    check_plugin_names(disabled, known, f"{source}: [plugins] disable")
    if allowed is not None:
        where = allow_where if allow_where == "HERD_PLUGINS" else f"{source}: {allow_where}"
        check_plugin_names(allowed, known, where)
    # dist.name / dist.version each parse METADATA with the email parser; most
    # plugins come from the same few distributions, so parse each one once
    dist_names: dict[str, tuple[str, str]] = {}
    for ep in sorted(found, key=lambda e: e.name):
        name, version = _dist_name_version(ep, dist_names)
        record = PluginRecord(name=ep.name, module=ep.value, distribution=name, version=version)
        records.append(record)
        if ep.name in disabled or (allowed is not None and ep.name not in allowed):
            record.status = "disabled"
            continue
        if pm.get_plugin(ep.name) is not None:
            record.hooks = _hook_names(pm, pm.get_plugin(ep.name))
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # any plugin bug must not take the kernel down
            record.status = "failed"
            record.error = _short_error(exc)
            if strict:
                raise PluginLoadError(
                    f"plugin '{ep.name}' ({record.distribution} {record.version}) failed to "
                    f"load: {record.error} — fix or uninstall it, or add it to "
                    f"[plugins] disable"
                ) from exc
            continue
        record.hooks = _hook_names(pm, plugin)
    return records


def _dist_name_version(ep: EntryPoint, seen: dict[str, tuple[str, str]]) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return "", ""
    key = str(getattr(dist, "_path", id(dist)))
    if key not in seen:
        metadata = dist.metadata
        seen[key] = (metadata["Name"] or "", metadata["Version"] or "")
    return seen[key]


def register_object(pm: pluggy.PluginManager, plugin: Any, name: str) -> PluginRecord:
    """Register an in-process plugin object (tests, scripts) and describe it."""
    pm.register(plugin, name=name)
    module = getattr(plugin, "__name__", type(plugin).__name__)
    return PluginRecord(name=name, module=module, hooks=_hook_names(pm, plugin))


def _hook_names(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    callers = pm.get_hookcallers(plugin) or []
    return sorted(caller.name for caller in callers)


def import_module(name: str) -> Any:
    return importlib.import_module(name)


# ---- plugin settings ----------------------------------------------------------------


#: a settings model, or a parser `(table, source) -> settings` raising ConfigError
SettingsCheck = type["BaseModel"] | Callable[[dict[str, Any], str], object]


@dataclass(frozen=True)
class SettingsSchema:
    """What a plugin declared for its `[plugins.<name>]` table (`register_settings`)."""

    name: str
    check: SettingsCheck
    docs: str
    plugin: str


def collect_settings(
    pm: pluggy.PluginManager, records: list[PluginRecord], strict: bool
) -> dict[str, SettingsSchema]:
    """Ask every plugin for its table schemas, one implementation at a time."""
    found: dict[str, SettingsSchema] = {}
    for impl in reversed(pm.hook.register_settings.get_hookimpls()):

        def register(name: str, check: SettingsCheck, docs: str = "docs/plugins.md") -> None:
            found[name] = SettingsSchema(name, check, docs, impl.plugin_name)  # noqa: B023

        try:
            impl.function(register=register)
        except Exception as exc:  # a broken plugin must not take the kernel down
            error = f"register_settings raised {_short_error(exc)}"
            if strict:
                raise PluginLoadError(
                    f"plugin '{impl.plugin_name}' failed in register_settings: "
                    f"{_short_error(exc)} — fix or disable it"
                ) from exc
            for record in records:
                if record.name == impl.plugin_name:
                    record.status = "failed"
                    record.error = error
                    record.failed_hooks["register_settings"] = error
    return found


def check_plugin_tables(
    config: HerdConfig,
    schemas: dict[str, SettingsSchema],
    records: list[PluginRecord],
    complete: bool,
) -> None:
    """Validate each `[plugins.<name>]` table; the first problem is a ConfigError.

    A table is checked by its declared schema; a table whose plugin is disabled (never
    imported) or declares none is left to that plugin. With `complete` (the installed
    entry points were loaded), a table naming no plugin at all is an error: its settings
    would do nothing — a redaction plugin configured under a misspelt name redacts
    nothing.
    """
    from pydantic import BaseModel

    from .config import validate_table

    known = {r.name for r in records} | set(schemas)
    for name, table in config.plugins.items():
        if name == "disable":
            continue
        schema = schemas.get(name)
        where = f"{config.source}: [plugins.{name}]"
        if schema is None and complete and name not in known:
            raise ConfigError(
                f"{where} is not an installed plugin's table — "
                f"{_did_you_mean(name, sorted(known))} (install that plugin, fix the "
                f"name, or remove the table; `herd plugins` lists them)"
            )
        if schema is None:
            continue
        if isinstance(schema.check, type) and issubclass(schema.check, BaseModel):
            validate_table(schema.check, table, where, schema.docs)
        else:
            parse = cast("Callable[[dict[str, Any], str], object]", schema.check)
            parse(table, config.source)
