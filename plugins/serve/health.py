"""`GET /readyz`: is this replica ready for traffic, and what is degraded.

Ready = the herd started (config loaded, plugins up), the key store answers (the
keys file parses, or Redis pings), the replica is not draining, and at least one
model is available. Model availability is judged without network (keys present,
provider plugin loaded); `?deep=1` adds each model's live health check (2 s each).
Load balancers take a replica out of rotation on 503. The circuit breaker's state is
shown (`breaker`); a shared breaker whose Redis is unreachable makes the replica
"degraded", not unready: its breaker still works, per process.
"""

from __future__ import annotations

import asyncio
from typing import Any

from modelherd.plugins.serve.gateway import Gateway
from modelherd.plugins.serve.keys import RedisKeyStore


async def readiness(gateway: Gateway, deep: bool = False) -> tuple[dict[str, Any], bool]:
    herd = gateway.herd
    checks: dict[str, Any] = {"started": gateway.started, "draining": gateway.draining}
    store = gateway.auth.store
    try:
        if isinstance(store, RedisKeyStore):
            async with asyncio.timeout(1.0):
                await store.aping()
        else:
            store.all()
        checks["keys"] = {"store": store.kind, "ok": True}
    except Exception as exc:
        checks["keys"] = {"store": store.kind, "ok": False, "error": type(exc).__name__}
    models: dict[str, Any] = {}
    for alias in herd.config.models:
        try:
            spec = herd.resolve(alias)
            cls = herd.providers.get(spec.provider)
            if cls is None:
                models[alias] = {"ok": False, "reason": f"provider '{spec.provider}' not loaded"}
                continue
            avail = cls.availability(spec, herd.env)
            models[alias] = {"ok": avail.ok, **({"reason": avail.reason} if avail.reason else {})}
            if deep and avail.ok:
                async with asyncio.timeout(2.0):
                    health = await herd.get_model(alias).health()
                models[alias] = {"ok": health.ok, "detail": health.detail}
        except Exception as exc:
            models[alias] = {"ok": False, "reason": type(exc).__name__}
    checks["models"] = models
    cache = herd.cache
    if cache is not None:
        checks["cache"] = [
            getattr(t, "name", type(t).__name__) for t in getattr(cache, "tiers", [])
        ]
    from modelherd.plugins.observability.alerts import alert_hooks

    hooks = alert_hooks(herd)
    breaker: dict[str, Any] = hooks.breaker_status() if hooks else {"enabled": False}
    checks["breaker"] = breaker
    any_model = any(m.get("ok") for m in models.values())
    ok = bool(gateway.started and not gateway.draining and checks["keys"]["ok"] and any_model)
    checks["status"] = "ready" if ok else "not ready"
    unshared = breaker.get("shared", {}).get("ok") is False
    if ok and (unshared or not all(m.get("ok") for m in models.values())):
        checks["status"] = "degraded"
    return checks, ok
