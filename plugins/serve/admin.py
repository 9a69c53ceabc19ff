"""Management routes, for admin keys only: list, create and revoke tenant keys.

GET    /admin/keys            -> the records (never a hash, never a token)
POST   /admin/keys            {"tenant": "alice", "models": [...], "expires": "30d"}
                              -> the new token, shown this once
DELETE /admin/keys/{id}       -> revoked (every replica sees it within key_cache_s)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from modelherd.errors import ConfigError
from modelherd.plugins.serve.auth import Principal, Refusal
from modelherd.plugins.serve.keys import KeyRecord, new_token, parse_expiry, token_hash


def make_record(
    tenant: str,
    models: list[str] | None,
    expires: str | None,
    admin: bool = False,
    note: str = "",
) -> tuple[KeyRecord, str]:
    """A new key: (the record to store, the token to show once)."""
    if not tenant or not tenant.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(
            f"tenant {tenant!r} must be letters, digits, '-', '_' or '.' (it names the tenant "
            f"in quotas, cache keys and metrics)"
        )
    key_id, token = new_token()
    record = KeyRecord(
        id=key_id,
        tenant=tenant,
        sha256=token_hash(token),
        created=time.time(),
        expires=parse_expiry(expires),
        models=sorted(set(models)) if models else None,
        admin=admin,
        note=note,
    )
    return record, token


def add_routes(
    app: web.Application,
    principal_of: Callable[[web.Request], Awaitable[Principal]],
    body_of: Callable[[web.Request], Awaitable[dict[str, Any]]],
) -> None:
    from modelherd.plugins.serve.app import GATEWAY_KEY

    async def admin(request: web.Request) -> Principal:
        principal = await principal_of(request)
        if not principal.admin:
            raise Refusal(
                403, "admin_only", "this route needs an admin key (`herd keys create --admin`)"
            )
        return principal

    async def list_keys(request: web.Request) -> web.StreamResponse:
        await admin(request)
        store = request.app[GATEWAY_KEY].auth.store
        records = await asyncio.to_thread(store.all)
        return web.json_response({"keys": [r.public() for r in records]})

    async def create_key(request: web.Request) -> web.StreamResponse:
        await admin(request)
        body = await body_of(request)
        models = body.get("models")
        if models is not None and not (
            isinstance(models, list) and all(isinstance(m, str) for m in models)
        ):
            raise Refusal(400, "invalid_models", '"models" must be a list of aliases')
        try:
            record, token = make_record(
                str(body.get("tenant", "")),
                models,
                body.get("expires"),
                note=str(body.get("note", "")),
            )
        except ConfigError as exc:
            raise Refusal(400, "invalid_key_request", str(exc)) from None
        store = request.app[GATEWAY_KEY].auth.store
        await asyncio.to_thread(store.add, record)
        return web.json_response({**record.public(), "key": token}, status=201)

    async def revoke_key(request: web.Request) -> web.StreamResponse:
        await admin(request)
        store = request.app[GATEWAY_KEY].auth.store
        record = await asyncio.to_thread(store.revoke, request.match_info["key_id"])
        if record is None:
            raise Refusal(404, "key_not_found", "no key with this id — GET /admin/keys lists them")
        return web.json_response(record.public())

    app.router.add_get("/admin/keys", list_keys)
    app.router.add_post("/admin/keys", create_key)
    app.router.add_delete("/admin/keys/{key_id}", revoke_key)
