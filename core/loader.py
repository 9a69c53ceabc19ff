"""Plugin discovery: one path (the `modelherd` entry-point group) for ours and theirs.

A plugin is blocked *before* it is imported when `[plugins] disable` names it or when
`HERD_PLUGINS` (a comma-separated allowlist) leaves it out. A plugin that fails to
import or register is recorded with its error and the rest keep working; with
`strict=True` the first failure raises `PluginLoadError`.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

import pluggy

from . import hookspecs
from .errors import PluginLoadError

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


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    # historic: every plugin registered from now on that adds its family's hookspecs
    # (agents/hookspecs.py) is called at registration, before anyone calls those hooks
    pm.hook.add_hookspecs.call_historic(kwargs={"pluginmanager": pm})
    if os.environ.get("HERD_TRACE_HOOKS") == "1":
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(f"[herd hooks] {msg}"))
        pm.enable_tracing()
    return pm


def _allowlist(config_allow: list[str] | None) -> set[str] | None:
    env = os.environ.get("HERD_PLUGINS")
    if env is not None:
        return {p.strip() for p in env.split(",") if p.strip()}
    return set(config_allow) if config_allow is not None else None


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
) -> list[PluginRecord]:
    """Import and register every allowed plugin in the group; return one record each."""
    allowed = _allowlist(allow)
    records: list[PluginRecord] = []
    found = eps if eps is not None else list(entry_points(group=GROUP))
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
