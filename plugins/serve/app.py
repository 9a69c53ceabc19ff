"""The aiohttp application: routes, the per-request middleware, health and metrics.

The middleware does, for every request: a request id (the client's `x-request-id`
if sane, else a new one; echoed in the response), a SERVER span continuing the
client's `traceparent`, refusing new work while draining, turning every error into
the route's vendor error shape, and the request metrics.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from modelherd.errors import HerdError
from modelherd.plugins.serve import anthropic_api, ollama_api, openai_api
from modelherd.plugins.serve.auth import Principal, Refusal, bearer
from modelherd.plugins.serve.errors import Dialect, error_response, refusal_for
from modelherd.plugins.serve.gateway import Gateway
from modelherd.plugins.serve.state import FIRST_CHUNK, MODEL, PRINCIPAL, REQUEST_ID, STREAM_STATUS

log = logging.getLogger("modelherd.serve")
GATEWAY_KEY = web.AppKey("herd.gateway", Gateway)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def dialect_for(path: str) -> Dialect:
    if path.startswith("/api/"):
        return "ollama"
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "openai"


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


#: routes that are not model calls: no metrics of their own, answered while draining
_OPS_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
#: request ids need to be unique, not secret: a random prefix per process and a counter
#: (uuid4 costs a getrandom() call per request)
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    gateway = request.app[GATEWAY_KEY]
    given = request.headers.get("x-request-id")
    request_id = given if given and _REQUEST_ID.match(given) else new_request_id()
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    route = _route_name(request)
    if gateway.tracer is None:  # tracing off: no span, no attributes built
        return await _answer(gateway, request, handler, route, started)
    from modelherd.plugins.serve.tracing import server_span

    attrs = {
        "http.request.method": request.method,
        "http.route": route,
        "url.path": request.path,
        "herd.request_id": request_id,
    }
    with server_span(gateway.tracer, f"{request.method} {route}", request.headers, attrs) as span:
        response = await _answer(gateway, request, handler, route, started)
        span.set_attribute("http.response.status_code", response.status)
        principal = request.get(PRINCIPAL)
        if principal is not None:
            span.set_attribute("herd.tenant", principal.tenant)
    return response


async def _answer(
    gateway: Gateway, request: web.Request, handler: Handler, route: str, started: float
) -> web.StreamResponse:
    """The route's response, every error in the route's vendor shape, and the metrics."""
    response: web.StreamResponse | None = None
    status = 500
    try:
        if gateway.draining and route not in _OPS_ROUTES:
            raise Refusal(503, "draining", "this replica is shutting down — retry", 1.0)
        response = await handler(request)
    except web.HTTPException as exc:
        # aiohttp's own refusals (413 body too large, 404 no route, 405) in our shape
        dialect = dialect_for(request.path)
        response = error_response(dialect, Refusal(exc.status, "http_error", exc.reason))
    except (Refusal, HerdError) as exc:
        response = error_response(dialect_for(request.path), refusal_for(exc))
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    except Exception as exc:
        # a bug of ours: the type and message go to the log, never the traceback's
        # locals (they may hold a key); the client gets a 500 without details
        log.error("serve: %s %s failed: %s: %s", request.method, route, type(exc).__name__, exc)
        response = error_response(dialect_for(request.path), refusal_for(exc))
    finally:
        if route not in _OPS_ROUTES:
            caller: Principal | None = request.get(PRINCIPAL)
            tenant = caller.tenant if caller is not None else "-"
            model = request.get(MODEL, "-")
            final_status = request.get(STREAM_STATUS) or (
                response.status if response is not None else status
            )
            gateway.metrics.answered(
                route, model, tenant, int(final_status), time.perf_counter() - started
            )
            first = request.get(FIRST_CHUNK)
            if first is not None:
                gateway.metrics.first_token.labels(route, gateway.metrics.models(model)).observe(
                    first - started
                )
    assert response is not None
    return response


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers["x-request-id"] = request_id
        if request.path.startswith("/v1/messages"):
            response.headers["request-id"] = request_id  # where the anthropic SDK looks


async def _principal(request: web.Request) -> Principal:
    gateway = request.app[GATEWAY_KEY]
    token = bearer(request.headers.get("Authorization"), request.headers.get("x-api-key"))
    principal = await gateway.auth.authenticate(token)
    request[PRINCIPAL] = principal
    return principal


async def _body(request: web.Request) -> dict[str, Any]:
    gateway = request.app[GATEWAY_KEY]
    try:
        if request.content.is_eof():  # all of it arrived with the head: nothing to wait for
            raw = await request.read()
        else:
            async with asyncio.timeout(gateway.settings.client_timeout_s):
                raw = await request.read()
    except TimeoutError:
        raise Refusal(
            408,
            "request_timeout",
            f"the request body did not arrive within {gateway.settings.client_timeout_s:g}s",
        ) from None
    try:
        body = json.loads(raw)
    except ValueError:
        raise Refusal(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Refusal(400, "invalid_json", "the request body must be a JSON object")
    return body


def _model_route(
    call: Callable[
        [Gateway, web.Request, Principal, dict[str, Any]], Awaitable[web.StreamResponse]
    ],
) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        principal = await _principal(request)
        body = await _body(request)
        return await call(request.app[GATEWAY_KEY], request, principal, body)

    return handler


async def _models(request: web.Request) -> web.StreamResponse:
    principal = await _principal(request)
    return await openai_api.list_models(request.app[GATEWAY_KEY], principal)


async def _tags(request: web.Request) -> web.StreamResponse:
    principal = await _principal(request)
    return await ollama_api.tags(request.app[GATEWAY_KEY], principal)


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.StreamResponse:
    from modelherd.plugins.serve.health import readiness

    deep = request.query.get("deep") in ("1", "true")
    body, ok = await readiness(request.app[GATEWAY_KEY], deep)
    return web.json_response(body, status=200 if ok else 503)


async def _metrics(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY_KEY]
    gateway.metrics.refresh_breakers(gateway.herd)
    data, content_type = gateway.metrics.render()
    return web.Response(body=data, headers={"Content-Type": content_type})


def build_app(gateway: Gateway) -> web.Application:
    from modelherd.plugins.serve import admin

    app = web.Application(
        middlewares=[gateway_middleware], client_max_size=gateway.settings.max_body_bytes
    )
    app[GATEWAY_KEY] = gateway
    app.on_response_prepare.append(_echo_request_id)
    app.router.add_post("/v1/chat/completions", _model_route(openai_api.chat_completions))
    app.router.add_post("/v1/embeddings", _model_route(openai_api.embeddings))
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/messages", _model_route(anthropic_api.messages))
    app.router.add_post("/api/chat", _model_route(ollama_api.chat))
    app.router.add_get("/api/tags", _tags)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    admin.add_routes(app, _principal, _body)

    async def on_startup(app: web.Application) -> None:
        await gateway.start()

    app.on_startup.append(on_startup)
    return app
