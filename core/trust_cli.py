"""`herd trust` / `herd untrust`: let herd use a plugins.toml or .env found in the
working directory (core/trust.py says why it does not by default)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import click

from .errors import ConfigError

#: what herd finds on its own in the working directory
IMPLICIT = (Path("plugins.toml"), Path(".env"))


def _targets(paths: tuple[str, ...]) -> list[Path]:
    if paths:
        return [Path(p) for p in paths]
    return [p for p in IMPLICIT if p.is_file()]


def _shown(path: Path) -> str:
    return str(path) if path.is_absolute() else f"./{path}"


def routing_settings(path: Path, data: bytes) -> list[str]:
    """The settings in a file that decide where keys, prompts and telemetry go — what
    to review before trusting it. Never a value from a .env (those are secrets)."""
    if path.name == ".env" or path.suffix == ".env":
        from io import StringIO

        from dotenv import dotenv_values

        names = sorted(dotenv_values(stream=StringIO(data.decode("utf-8", "replace"))))
        return [f"sets {', '.join(names)}"] if names else []
    try:
        table = tomllib.loads(data.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError:
        return ["(not valid TOML: herd will report the error when it reads it)"]
    out: list[str] = []
    for alias, spec in sorted((table.get("models") or {}).items()):
        if isinstance(spec, dict):
            out += _model_lines(f"[models.{alias}]", spec)
    for name, prof in sorted((table.get("profiles") or {}).items()):
        if isinstance(prof, dict):
            for alias, spec in sorted((prof.get("models") or {}).items()):
                if isinstance(spec, dict):
                    out += _model_lines(f"[profiles.{name}.models.{alias}]", spec)
    plugins = table.get("plugins") or {}
    routed = {
        "otel": ("endpoint", "capture_content", "headers", "enabled"),
        "alerts": ("webhook_url",),
        "cache_redis": ("url",),
        "audit": ("path",),
    }
    for name, keys in routed.items():
        section = plugins.get(name)
        if isinstance(section, dict):
            for key in keys:
                if key in section:
                    out.append(f"[plugins.{name}] {key} = {_value(key, section[key])}")
    return out


def _model_lines(where: str, spec: dict[str, Any]) -> list[str]:
    return [
        f"{where} {key} = {_value(key, spec[key])}"
        for key in ("base_url", "api_key_env", "headers")
        if key in spec
    ]


def _value(key: str, value: Any) -> str:
    if key == "headers" and isinstance(value, dict):
        return "{" + ", ".join(f"{k} = …" for k in value) + "}"  # header values may be tokens
    return json.dumps(value, default=str)


@click.command("trust")
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@click.option("--list", "list_", is_flag=True, help="List trusted files and whether they changed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with --list).")
def trust_cmd(paths: tuple[str, ...], list_: bool, as_json: bool) -> None:
    """Let herd use ./plugins.toml and ./.env (or PATH) as they are now.

    Records each file's path and SHA-256 in your data dir; an edited file must be
    trusted again. Review what it sets first: where it sends your keys and prompts.
    """
    from .trust import TrustStore

    store = TrustStore()
    if list_:
        _list(store, as_json)
        return
    targets = _targets(paths)
    if not targets:
        raise ConfigError(
            "nothing to trust here: no ./plugins.toml or ./.env — run it in the folder "
            "that has them, or give a path: herd trust PATH"
        )
    for path in targets:
        if not path.is_file():
            raise ConfigError(f"{_shown(path)} is not a file — check the path")
        data = path.read_bytes()
        record = store.trust(path, data)
        click.echo(f"trusted {_shown(path)} (sha256 {record.sha256[:12]}…)")
        for line in routing_settings(path, data):
            click.echo(f"  {line}")


def _list(store: Any, as_json: bool) -> None:
    rows = []
    for record in sorted(store.records.values(), key=lambda r: r.path):
        path = Path(record.path)
        if not path.is_file():
            status = "missing"
        else:
            status = store.verdict(path, path.read_bytes())
            status = "ok" if status == "trusted" else "changed"
        rows.append({**vars(record), "status": status})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if store.problem:
        click.echo(f"nothing is trusted: {store.problem} — run `herd trust` again", err=True)
    if not rows:
        click.echo("no trusted files (run `herd trust` in a folder with a plugins.toml)")
    for row in rows:
        note = {"ok": "", "changed": "  (changed since: trust it again)", "missing": "  (gone)"}
        click.echo(f"{row['path']}  sha256 {row['sha256'][:12]}…{note[row['status']]}")


@click.command("untrust")
@click.argument("paths", nargs=-1, metavar="[PATH]...")
def untrust_cmd(paths: tuple[str, ...]) -> None:
    """Stop using ./plugins.toml and ./.env (or PATH) until trusted again."""
    from .trust import TrustStore

    store = TrustStore()
    targets = [Path(p) for p in paths] if paths else list(IMPLICIT)
    removed = False
    for path in targets:
        if store.untrust(path):
            removed = True
            click.echo(f"untrusted {_shown(path)}")
    if not removed:
        shown = ", ".join(_shown(p) for p in targets)
        click.echo(f"{shown}: not trusted, nothing to do")
