"""The embeddings calls of the openai family (`POST /embeddings`) and Ollama
(`POST /api/embed`), through their official SDKs; `herd.embed` (core/embed.py) does
the batching, caching and coalescing around them. SDK errors become the kernel's
typed errors through each provider's own `map_error`."""

from __future__ import annotations

from typing import Any

from modelherd.embed import EmbedRequest
from modelherd.types import ChatRequest, EmbedResponse, Usage, trusted

#: options the embeddings endpoints take (anything else is an error)
OPENAI_OPTIONS = frozenset({"dimensions", "user"})
OLLAMA_OPTIONS = frozenset({"dimensions", "truncate", "keep_alive"})


def _as_chat(request: EmbedRequest) -> ChatRequest:
    """What the providers' error mapping reads (alias, provider, model)."""
    return trusted(
        ChatRequest,
        {
            "alias": request.alias,
            "provider": request.provider,
            "model": request.model,
            "messages": [],
        },
    )


def _options(model: Any, request: EmbedRequest, allowed: frozenset[str]) -> dict[str, Any]:
    options = {k: v for k, v in request.options.items() if v is not None}
    for name in options:
        if name not in allowed:
            raise model.option_error(name, sorted(allowed), "for embeddings")
    return options


async def openai_embed(model: Any, request: EmbedRequest) -> EmbedResponse:
    options = _options(model, request, OPENAI_OPTIONS)
    name = request.model or model.spec.model
    try:
        page = await model.client().embeddings.create(
            model=name, input=request.texts, encoding_format="float", **options
        )
        vectors = [list(item.embedding) for item in sorted(page.data, key=lambda d: d.index)]
        tokens = page.usage.prompt_tokens if page.usage is not None else 0
    except Exception as exc:
        raise await model.map_error(exc, _as_chat(request)) from exc
    # the SDK has parsed the floats already: a second validation of every one of them
    # would cost more than the rest of the call (bench/tools.py)
    return trusted(
        EmbedResponse,
        {
            "vectors": vectors,
            "model": page.model or name,
            "provider": model.provider,
            "alias": request.alias,
            "usage": Usage(input_tokens=tokens or 0),
        },
    )


async def ollama_embed(model: Any, request: EmbedRequest) -> EmbedResponse:
    options = _options(model, request, OLLAMA_OPTIONS)
    name = model.name
    try:
        reply = await model.client().embed(model=name, input=request.texts, **options)
        vectors = [list(v) for v in reply.embeddings]
    except Exception as exc:
        raise await model.map_error(exc, _as_chat(request), name) from exc
    return trusted(
        EmbedResponse,
        {
            "vectors": vectors,
            "model": reply.model or name,
            "provider": model.provider,
            "alias": request.alias,
            "usage": Usage(input_tokens=reply.prompt_eval_count or 0),
        },
    )
