"""`herd.embed(model, texts)`: vectors for texts, batched, cached, coalesced, measured.

Embeddings are deterministic, so every text is cached on its own (the same tiers as
chat answers, under a key of its own kind: `embed_key`) and only the texts no tier
holds go upstream, in batches of the model's `embed_batch_size`, a few batches at a
time. Identical batches already in flight share one upstream call (the kernel's
Coalescer). Admission (tenant quotas, the scheduler) sees the call as a request whose
messages are the texts, so quotas hold for embeddings too. Each upstream batch is one
`embeddings` operation: metrics `gen_ai.client.operation.duration` and
`gen_ai.client.token.usage` (attribute `gen_ai.operation.name = "embeddings"`) and a
span through the otel plugin's `track_event`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ConfigDict, Field

from .errors import BadRequestError, ConfigError
from .lazy_model import LazyModel
from .types import ChatRequest, ChatResponse, EmbedResponse, Message, Metric, Usage, trusted

if TYPE_CHECKING:
    from .kernel import Herd
    from .provider import Model

KEY_KIND = "embed-v1"
#: upstream batches of one call in flight at once
_CONCURRENT_BATCHES = 4


class EmbedRequest(LazyModel):
    """One upstream embeddings call (a batch), as a provider's `embed` receives it."""

    model_config = ConfigDict(extra="forbid")

    alias: str
    provider: str
    model: str
    texts: list[str]
    options: dict[str, Any] = Field(default_factory=dict)
    tenant: str | None = None
    timeout: float | None = None


def embed_key(
    tenant: str | None, provider: str, model: str, options: dict[str, Any], text: str
) -> str:
    """The cache key of one text's vector (tenant prefix, like chat keys)."""
    payload = repr((KEY_KIND, provider, model, sorted(options.items()), text))
    digest = hashlib.blake2b(payload.encode(), digest_size=20).hexdigest()
    return f"{tenant or 'default'}:{digest}"


async def embed(
    herd: Herd,
    model: str | None,
    texts: str | Sequence[str],
    *,
    tenant: str | None = None,
    cache: str = "default",
    timeout: float | None = None,
    batch_size: int | None = None,
    **options: Any,
) -> EmbedResponse:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ConfigError("texts is empty — pass a string or a list of strings to embed")
    if not all(isinstance(t, str) for t in texts):
        raise ConfigError("embed takes strings — convert each item to str first")
    if cache not in ("default", "no-store", "no-cache"):
        raise ConfigError(
            f"cache={cache!r} is not a mode for embed — use default, no-store or no-cache"
        )
    if not herd._started:
        await herd.start()
    spec = herd.resolve(model)
    provider = herd.get_model(spec.alias)
    if not getattr(provider, "can_embed", False):
        raise BadRequestError(
            f"'{spec.alias}' ({spec.provider}) does not make embeddings — use an alias on "
            f"openai, openai_compatible, ollama or llamacpp with an embedding model "
            f"(docs/tools.md)"
        )
    started = time.perf_counter()
    timeout = timeout if timeout is not None else spec.timeout
    admission = ChatRequest(
        alias=spec.alias,
        provider=spec.provider,
        model=spec.model,
        messages=[Message(role="user", content=t) for t in texts],
        tenant=tenant,
        options={**spec.options, **options},
    )
    async with AsyncExitStack() as stack:
        if herd._has.get("acquire_admission"):
            for gate in herd.call_admission(admission):
                await stack.enter_async_context(gate)
        return await _embed_admitted(
            herd, provider, spec.alias, texts, tenant, cache, timeout, batch_size, options, started
        )


async def _embed_admitted(
    herd: Herd,
    provider: Model,
    alias: str,
    texts: list[str],
    tenant: str | None,
    cache_mode: str,
    timeout: float | None,
    batch_size: int | None,
    options: dict[str, Any],
    started: float,
) -> EmbedResponse:
    spec = provider.spec
    merged = {**spec.options, **options}
    tiers = herd.cache
    keys = [embed_key(tenant, spec.provider, spec.model, merged, t) for t in texts]
    vectors: list[list[float] | None] = [None] * len(texts)
    if tiers is not None and cache_mode in ("default", "no-store"):
        for index, key in enumerate(keys):
            hit = await tiers.lookup(key)
            if hit is not None:
                vectors[index] = json.loads(hit.content)
    cached = sum(v is not None for v in vectors)
    # each distinct missing text once, in first-seen order
    missing: dict[str, list[int]] = {}
    for index, text in enumerate(texts):
        if vectors[index] is None:
            missing.setdefault(text, []).append(index)
    size = batch_size or int(getattr(provider, "embed_batch_size", 64))
    if size < 1:
        raise ConfigError(f"batch_size={size} must be at least 1")
    pending = list(missing)
    batches = [pending[i : i + size] for i in range(0, len(pending), size)]
    usage = Usage()
    model_name = spec.model
    limiter = anyio.Semaphore(_CONCURRENT_BATCHES)

    async def run(batch: list[str]) -> None:
        nonlocal model_name
        async with limiter:
            result = await _batch(herd, provider, alias, batch, tenant, timeout, merged)
        if len(result.vectors) != len(batch):
            raise BadRequestError(
                f"'{alias}' returned {len(result.vectors)} vectors for {len(batch)} texts — "
                f"the server does not batch; pass batch_size=1"
            )
        usage.input_tokens += result.usage.input_tokens
        model_name = result.model or model_name
        for text, vector in zip(batch, result.vectors, strict=True):
            for index in missing[text]:
                vectors[index] = vector
            if tiers is not None and cache_mode in ("default", "no-cache"):
                stored = ChatResponse(
                    content=json.dumps(vector),
                    model=result.model,
                    provider=spec.provider,
                    alias=alias,
                )
                await tiers.store(keys[missing[text][0]], stored, None)

    if len(batches) == 1:
        await run(batches[0])
    elif batches:
        try:
            async with anyio.create_task_group() as group:
                for batch in batches:
                    group.start_soon(run, batch)
        except BaseExceptionGroup as group:  # the caller gets the batch's own error
            raise group.exceptions[0] from None
    done = [v for v in vectors if v is not None]
    assert len(done) == len(texts)
    return trusted(  # the vectors were checked where they came in
        EmbedResponse,
        {
            "vectors": done,
            "model": model_name,
            "provider": spec.provider,
            "alias": alias,
            "usage": usage,
            "latency_s": time.perf_counter() - started,
            "cached": cached,
        },
    )


async def _batch(
    herd: Herd,
    provider: Model,
    alias: str,
    batch: list[str],
    tenant: str | None,
    timeout: float | None,
    options: dict[str, Any],
) -> EmbedResponse:
    """One upstream call, coalesced with an identical batch already in flight, under the
    call's timeout, measured and traced as an `embeddings` operation."""
    from .events import EmbeddingsDone

    spec = provider.spec
    request = EmbedRequest(
        alias=alias,
        provider=spec.provider,
        model=spec.model,
        texts=batch,
        options=options,
        tenant=tenant,
        timeout=timeout,
    )
    key = "embed:" + embed_key(tenant, spec.provider, spec.model, options, "\x00".join(batch))
    limit = timeout if timeout is not None else herd.config.herd.timeout
    start_ns = time.time_ns()
    began = time.perf_counter()
    error: BaseException | None = None

    async def call() -> EmbedResponse:
        with anyio.fail_after(limit):
            result: EmbedResponse = await provider.embed(request)
        return result

    try:
        result, _led = await herd._coalescer.run_led(key, call)
    except TimeoutError:
        error = _timeout(alias, spec.provider, limit)
        raise error from None
    except BaseException as exc:
        error = exc
        raise
    finally:
        elapsed = time.perf_counter() - began
        herd.track(
            EmbeddingsDone(
                alias=alias,
                provider=spec.provider,
                model=spec.model,
                count=len(batch),
                input_tokens=0 if error is not None else result.usage.input_tokens,
                start_ns=start_ns,
                end_ns=time.time_ns(),
                error_type=type(error).__name__ if error is not None else None,
                tenant=tenant,
            )
        )
        if herd.wants_metrics:
            attrs = {
                "gen_ai.operation.name": "embeddings",
                "gen_ai.provider.name": spec.provider,
                "gen_ai.request.model": spec.model,
                "herd.alias": alias,
            }
            herd.emit(Metric("gen_ai.client.operation.duration", elapsed, "s", "histogram", attrs))
            if error is None:
                herd.emit(
                    Metric(
                        "gen_ai.client.token.usage",
                        result.usage.input_tokens,
                        "{token}",
                        "histogram",
                        {**attrs, "gen_ai.token.type": "input"},
                    )
                )
    return result


def _timeout(alias: str, provider: str, limit: float) -> BaseException:
    from .errors import CallTimeoutError

    return CallTimeoutError(
        f"'{alias}' ({provider}) made no embeddings within {limit:g}s — pass a larger "
        f"timeout= or set [models.{alias}] timeout"
    )
