"""The gateway's one road into the herd: every route calls `herd.chat` or `herd.stream`.

So aliases, fallbacks, cache, coalescing, admission (tenant quotas, the load
scheduler), the circuit breaker, tracing, cost and logs apply to HTTP callers exactly
as they do to library callers. The tenant passed down is the key's, never the body's.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from modelherd.errors import UnknownModelError
from modelherd.plugins.serve.auth import Authenticator, Principal, Refusal
from modelherd.plugins.serve.metrics import GatewayMetrics
from modelherd.plugins.serve.settings import ServeSettings
from modelherd.types import ChatResponse, Message

if TYPE_CHECKING:
    from modelherd import Herd


class Gateway:
    """State shared by the routes of one worker."""

    def __init__(
        self, herd: Herd, settings: ServeSettings, auth: Authenticator, metrics: GatewayMetrics
    ) -> None:
        self.herd = herd
        self.settings = settings
        self.auth = auth
        self.metrics = metrics
        self.tracer: Any = None
        self.in_flight = 0
        self.draining = False
        self.started_at = time.time()
        self.started = False

    async def start(self) -> None:
        await self.herd.start()
        from modelherd.plugins.serve.tracing import tracer_for

        self.tracer = tracer_for(self.herd)
        self.started = True

    # ---- models ------------------------------------------------------------------

    def aliases(self, principal: Principal) -> list[str]:
        """The aliases this key may call (configured ones; `provider/model` pairs are
        callable when the key allows every model, but are not listed)."""
        names = list(self.herd.config.models)
        return [n for n in names if principal.may_use(n)]

    def check_model(self, principal: Principal, alias: str | None) -> str:
        if not alias:
            raise Refusal(400, "missing_model", 'the request names no model — set "model"')
        if principal.admin:
            raise Refusal(
                403, "admin_key", "an admin key manages keys only — call models with a tenant key"
            )
        if not principal.may_use(alias):
            raise Refusal(
                403,
                "model_not_allowed",
                f"this key may not use model '{alias}' — allowed: "
                f"{', '.join(sorted(principal.models or ())) or 'none'}",
            )
        try:
            self.herd.resolve(alias)
        except UnknownModelError:
            raise Refusal(
                404,
                "model_not_found",
                f"no model '{alias}' here — GET /v1/models lists the ones this key may use",
            ) from None
        return alias

    # ---- calls -------------------------------------------------------------------

    async def chat(
        self, principal: Principal, alias: str, messages: list[Message], options: dict[str, Any]
    ) -> ChatResponse:
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            response = await self.herd.chat(alias, messages, tenant=principal.tenant, **options)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
        self.metrics.served(alias, principal.tenant, response)
        return response

    async def stream(
        self, principal: Principal, alias: str, messages: list[Message], options: dict[str, Any]
    ) -> AsyncIterator[str | ChatResponse]:
        """The herd's stream, with its first item already fetched.

        Admission, the cache lookup and the first upstream bytes all happen before the
        first item, so an error there still becomes a proper HTTP status: the caller
        must `await anext()` once before sending headers (see `open_stream`).
        """
        self.in_flight += 1
        self.metrics.in_flight.inc()
        source = self.herd.stream(alias, messages, tenant=principal.tenant, **options)
        try:
            async for item in source:
                if isinstance(item, ChatResponse):
                    self.metrics.served(alias, principal.tenant, item)
                yield item
        finally:
            # a client that went away closes this generator: close the upstream stream
            # (and exit admission, freeing the tenant's slot) right now
            await source.aclose()
            self.in_flight -= 1
            self.metrics.in_flight.dec()


async def open_stream(
    items: AsyncIterator[str | ChatResponse],
) -> tuple[str | ChatResponse, AsyncIterator[str | ChatResponse]]:
    """(first item, the iterator): raises before any byte is sent when the call fails."""
    try:
        first = await items.__anext__()
    except BaseException:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
        raise
    return first, items
