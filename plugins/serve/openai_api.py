"""OpenAI-compatible routes: POST /v1/chat/completions, POST /v1/embeddings (through
`herd.embed`: batched, cached per text, admitted like chat), GET /v1/models.

Wire format as the openai SDK reads it: a `chat.completion` object, or SSE
`chat.completion.chunk` events ending in `data: [DONE]`; with
`stream_options.include_usage` a last chunk with `choices: []` carries the usage.
An error after the stream started is a `data: {"error": …}` event and no [DONE], which
the SDK raises as an APIError (a stream that just stopped would look complete).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from modelherd.plugins.serve.auth import Principal, Refusal
from modelherd.plugins.serve.errors import error_body, refusal_for
from modelherd.plugins.serve.gateway import Gateway, open_stream
from modelherd.plugins.serve.jsonio import dumps, json_response
from modelherd.plugins.serve.state import FIRST_CHUNK, MODEL, REQUEST_ID, STREAM_STATUS
from modelherd.plugins.serve.wire import openai_messages, openai_tool_calls
from modelherd.types import ChatResponse, TextDelta, ToolCallDelta, ToolCallStart

#: OpenAI request fields passed to the herd as call options (providers map them)
PASSED = (
    "temperature",
    "top_p",
    "seed",
    "stop",
    "response_format",
    "tools",
    "tool_choice",
    "frequency_penalty",
    "presence_penalty",
    "reasoning_effort",
)
#: fields accepted and without effect here (or handled by the route itself)
ACCEPTED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "parallel_tool_calls",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "logprobs",
        *PASSED,
    }
)


def parse_options(body: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(k for k in body if k not in ACCEPTED)
    if unknown:
        raise Refusal(
            400, "unsupported_parameter", f"unsupported parameter(s): {', '.join(unknown)}"
        )
    if body.get("n") not in (None, 1):
        raise Refusal(
            400, "unsupported_parameter", "n > 1 is not supported — send n separate requests"
        )
    if body.get("logprobs"):
        raise Refusal(400, "unsupported_parameter", "logprobs are not supported by this gateway")
    options = {k: body[k] for k in PASSED if body.get(k) is not None}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    return options


def _usage(response: ChatResponse) -> dict[str, Any]:
    usage = response.usage
    out: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cache_read_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cache_read_tokens}
    return out


def _finish(response: ChatResponse) -> str:
    return response.finish_reason if response.finish_reason != "unknown" else "stop"


def completion(response: ChatResponse, completion_id: str, alias: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": response.content, "refusal": None}
    if response.tool_calls:
        message["tool_calls"] = openai_tool_calls(response.tool_calls)
        message["content"] = response.content or None
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": alias,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(response)}
        ],
        "usage": _usage(response),
        "system_fingerprint": None,
    }


def _chunk(
    completion_id: str, created: int, alias: str, delta: dict[str, Any], finish: str | None
) -> bytes:
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": alias,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + dumps(body) + b"\n\n"


def _delta(item: Any) -> dict[str, Any] | None:
    """The chunk delta for one stream item: text, or a tool-call event; None to skip."""
    if isinstance(item, str):
        return {"content": item} if item else None
    if isinstance(item, TextDelta):
        return {"content": item.text} if item.text else None
    if isinstance(item, ToolCallStart):
        call = {"id": item.id, "type": "function", "function": {"name": item.name, "arguments": ""}}
        return {"tool_calls": [{"index": item.index, **call}]}
    if isinstance(item, ToolCallDelta):
        return {"tool_calls": [{"index": item.index, "function": {"arguments": item.arguments}}]}
    return None  # reasoning, keep-alives, tool-call ends: nothing on the OpenAI wire


async def chat_completions(
    gateway: Gateway, request: web.Request, principal: Principal, body: dict[str, Any]
) -> web.StreamResponse:
    alias = gateway.check_model(principal, body.get("model"))
    request[MODEL] = alias
    messages = openai_messages(body.get("messages"))
    options = parse_options(body)
    completion_id = f"chatcmpl-{request[REQUEST_ID]}"
    if not body.get("stream"):
        response = await gateway.chat(principal, alias, messages, options)
        return json_response(
            completion(response, completion_id, alias),
            headers={"x-herd-cache": response.cache_tier or "miss"},
        )
    stream_options = body.get("stream_options") or {}
    include_usage = bool(isinstance(stream_options, dict) and stream_options.get("include_usage"))
    first, items = await open_stream(gateway.stream(principal, alias, messages, options))
    created = int(time.time())
    out = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await out.prepare(request)
    await out.write(
        _chunk(completion_id, created, alias, {"role": "assistant", "content": ""}, None)
    )
    final: ChatResponse | None = None
    streamed_calls = False
    try:
        item: Any = first
        while item is not None:
            if isinstance(item, ChatResponse):
                final = item
            else:
                delta = _delta(item)
                if delta is not None:
                    if FIRST_CHUNK not in request:
                        request[FIRST_CHUNK] = time.perf_counter()
                    streamed_calls = streamed_calls or "tool_calls" in delta
                    await out.write(_chunk(completion_id, created, alias, delta, None))
            item = await anext(items, None)
    except (ConnectionResetError, OSError):
        raise
    except Exception as exc:
        refusal = refusal_for(exc)
        request[STREAM_STATUS] = refusal.status
        await out.write(b"data: " + dumps(error_body("openai", refusal)) + b"\n\n")
        return out
    finally:
        await items.aclose()
    assert final is not None
    if final.tool_calls and not streamed_calls:
        # the stream carried no tool-call events: send each whole call as one delta
        for index, call in enumerate(openai_tool_calls(final.tool_calls)):
            delta = {"tool_calls": [{"index": index, **call}]}
            await out.write(_chunk(completion_id, created, alias, delta, None))
    await out.write(_chunk(completion_id, created, alias, {}, _finish(final)))
    if include_usage:
        usage = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": alias,
            "choices": [],
            "usage": _usage(final),
        }
        await out.write(b"data: " + dumps(usage) + b"\n\n")
    await out.write(b"data: [DONE]\n\n")
    await out.write_eof()
    return out


async def list_models(gateway: Gateway, principal: Principal) -> web.Response:
    created = int(gateway.started_at)
    data = [
        {"id": alias, "object": "model", "created": created, "owned_by": "modelherd"}
        for alias in gateway.aliases(principal)
    ]
    return json_response({"object": "list", "data": data})


_EMBED_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    import base64
    import struct

    # what OpenAI sends for encoding_format="base64" (the openai SDK's default): the
    # little-endian float32 array, base64-encoded
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


async def embeddings(
    gateway: Gateway, request: web.Request, principal: Principal, body: dict[str, Any]
) -> web.Response:
    unknown = sorted(k for k in body if k not in _EMBED_FIELDS)
    if unknown:
        raise Refusal(
            400, "unsupported_parameter", f"unsupported parameter(s): {', '.join(unknown)}"
        )
    alias = gateway.check_model(principal, body.get("model"))
    request[MODEL] = alias
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise Refusal(
            400, "invalid_input", '"input" must be a string or a non-empty list of strings'
        )
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise Refusal(400, "invalid_encoding", 'encoding_format must be "float" or "base64"')
    options = {"dimensions": body["dimensions"]} if body.get("dimensions") else {}
    gateway.in_flight += 1
    gateway.metrics.in_flight.inc()
    try:
        result = await gateway.herd.embed(alias, texts, tenant=principal.tenant, **options)
    finally:
        gateway.in_flight -= 1
        gateway.metrics.in_flight.dec()
    tokens = result.usage.input_tokens
    return json_response(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(list(v), encoding)}
                for i, v in enumerate(result.vectors)
            ],
            "model": alias,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
