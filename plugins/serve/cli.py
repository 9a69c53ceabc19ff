"""`herd serve` and `herd keys` (create / list / revoke)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import click
    from modelherd import Herd
    from modelherd.plugins.serve.settings import ServeSettings


def _herd(ctx: Any) -> Herd:
    from modelherd.kernel import Herd

    root = ctx.find_root().params or {}
    return Herd(config_path=root.get("config_path"), profile=root.get("profile"))


def load_settings(herd: Herd, **overrides: Any) -> ServeSettings:
    from modelherd.plugins.serve.settings import DOCS, ServeSettings

    settings = herd.plugin_config("serve", ServeSettings, DOCS)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes:
        from modelherd.config import validate_table

        settings = validate_table(
            ServeSettings, {**settings.model_dump(), **changes}, "herd serve options", DOCS
        )
    return settings


def make_serve_command() -> click.Command:
    import click

    @click.command("serve")
    @click.option(
        "--host", default=None, help="Address to bind (default 127.0.0.1: loopback only)."
    )
    @click.option("--port", type=int, default=None, help="Port (default 4000).")
    @click.option("--workers", type=int, default=None, help="Worker processes sharing the port.")
    @click.option("--certfile", default=None, help="TLS certificate (PEM); with --keyfile.")
    @click.option("--keyfile", default=None, help="TLS private key (PEM).")
    @click.pass_context
    def serve_command(
        ctx: click.Context,
        host: str | None,
        port: int | None,
        workers: int | None,
        certfile: str | None,
        keyfile: str | None,
    ) -> None:
        """Serve the herd over HTTP: OpenAI, Ollama and Anthropic APIs, tenant keys, /metrics."""
        import asyncio

        from modelherd.errors import ConfigError
        from modelherd.plugins.serve.server import (
            check_aiohttp,
            run_worker,
            run_workers,
            ssl_context,
        )

        root = ctx.find_root().params or {}
        try:
            herd = _herd(ctx)
            settings = load_settings(
                herd, host=host, port=port, workers=workers, certfile=certfile, keyfile=keyfile
            )
            ssl_context(settings)  # a bad certificate is a config error before any worker starts
            check_aiohttp()  # so is a server that cannot drop a stalled client
            if settings.workers > 1 and settings.port == 0:
                raise ConfigError(
                    "--workers needs a fixed --port (port 0 would give each worker its own)"
                )
            from modelherd.plugins.serve.keys import open_store

            store = open_store(settings, herd.env)
            if store.kind == "file" and not store.all():
                click.echo(
                    "herd serve: no API keys yet — every model request will get 401 until you run "
                    "`herd keys create --tenant NAME`",
                    err=True,
                )
            if settings.workers > 1:
                ctx.exit(run_workers(root.get("config_path"), root.get("profile"), settings))
                return
            asyncio.run(run_worker(herd, settings))
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)

    return serve_command


def make_keys_group() -> click.Group:
    import click

    @click.group("keys")
    def keys_group() -> None:
        """Tenant API keys for `herd serve` (stored as SHA-256 hashes only)."""

    def _store(ctx: click.Context) -> tuple[Herd, Any]:
        from modelherd.plugins.serve.keys import open_store

        herd = _herd(ctx)
        return herd, open_store(load_settings(herd), herd.env)

    @keys_group.command("create")
    @click.option(
        "--tenant", default=None, help="The tenant this key speaks for (required unless --admin)."
    )
    @click.option("--expires", default=None, help="30d, 12h, 90m, 2w, or an ISO date.")
    @click.option(
        "--models", default=None, help="Comma-separated aliases this key may use (default: all)."
    )
    @click.option("--admin", is_flag=True, help="A key for the management routes (/admin/keys).")
    @click.option("--note", default="", help="A free-text note stored with the key.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def create(
        ctx: click.Context,
        tenant: str | None,
        expires: str | None,
        models: str | None,
        admin: bool,
        note: str,
        as_json: bool,
    ) -> None:
        """Create a key; it is printed once and never stored."""
        import json

        from modelherd.errors import ConfigError
        from modelherd.plugins.serve.admin import make_record

        try:
            herd, store = _store(ctx)
            if tenant is None:
                if not admin:
                    raise ConfigError("--tenant is required — e.g. herd keys create --tenant alice")
                tenant = "admin"
            aliases = [m.strip() for m in models.split(",") if m.strip()] if models else None
            for alias in aliases or []:
                herd.resolve(alias)  # UnknownModelError names the fix
            notes = []
            tenants = herd.config.tenants
            if not admin and tenants and tenant not in tenants:
                unknown = herd.plugin_settings("tenants").get("unknown_tenant", "reject")
                if unknown == "reject":
                    raise ConfigError(
                        f"{herd.config.source}: [tenants.{tenant}] does not exist, so every call "
                        f"with this key would be refused — add [tenants.{tenant}] tier = "
                        f'"basic" first'
                    )
                notes.append(f"tenant '{tenant}' is not configured: it gets tier '{unknown}'")
            if not admin and not tenants:
                notes.append(
                    "no [tenants.*] in the config: this tenant's calls are isolated in the cache "
                    "but not limited (docs/resources.md)"
                )
            record, token = make_record(tenant, aliases, expires, admin=admin, note=note)
            store.add(record)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
            return
        if as_json:
            click.echo(json.dumps({**record.public(), "key": token}, indent=2))
            return
        click.echo(token)
        click.echo(
            f"key {record.id} for tenant '{record.tenant}' stored in {store.describe()} — "
            f"this is the only time the key is shown",
            err=True,
        )
        for line in notes:
            click.echo(f"note: {line}", err=True)

    @keys_group.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def list_keys(ctx: click.Context, as_json: bool) -> None:
        """List keys (id, tenant, models, expiry, state); never the keys themselves."""
        from datetime import UTC, datetime

        from modelherd.errors import ConfigError
        from modelherd.plugins.serve.keys import dumps_public

        try:
            _, store = _store(ctx)
            records = sorted(store.all(), key=lambda r: r.created)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
            return
        if as_json:
            click.echo(dumps_public(records))
            return
        if not records:
            click.echo(
                f"no keys in {store.describe()} — create one: herd keys create --tenant NAME"
            )
            return

        def when(stamp: float | None) -> str:
            if stamp is None:
                return "never"
            return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M")

        click.echo(f"{'id':<13} {'tenant':<16} {'state':<8} {'expires':<17} models")
        for r in records:
            kind = " (admin)" if r.admin else ""
            models = ",".join(r.models) if r.models else "*"
            click.echo(
                f"{r.id:<13} {r.tenant + kind:<16} {r.state():<8} {when(r.expires):<17} {models}"
            )

    @keys_group.command("revoke")
    @click.argument("key_id")
    @click.pass_context
    def revoke(ctx: click.Context, key_id: str) -> None:
        """Revoke a key by id (`herd keys list` shows ids); replicas see it within key_cache_s."""
        from modelherd.errors import ConfigError

        try:
            _, store = _store(ctx)
            record = store.revoke(key_id)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
            return
        if record is None:
            click.echo(
                f"error: no key with id '{key_id}' — `herd keys list` shows the ids", err=True
            )
            ctx.exit(1)
            return
        click.echo(f"revoked key {record.id} (tenant '{record.tenant}')")

    return keys_group
