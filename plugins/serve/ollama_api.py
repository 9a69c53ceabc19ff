"""Ollama-compatible routes: POST /api/chat (NDJSON streaming by default), GET /api/tags.

So the `ollama` Python client (and Ollama-speaking tools) work unchanged against the
gateway: `ollama.Client(host="http://127.0.0.1:4000", headers={"Authorization":
"Bearer hk_…"})`. `stream` defaults to true, as in Ollama; an error after the first
line is an `{"error": …}` line, which the client raises as ResponseError.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from modelherd.plugins.serve.auth import Principal, Refusal
from modelherd.plugins.serve.errors import error_body, refusal_for
from modelherd.plugins.serve.gateway import Gateway, open_stream
from modelherd.plugins.serve.jsonio import dumps, json_response
from modelherd.plugins.serve.state import FIRST_CHUNK, MODEL, STREAM_STATUS
from modelherd.plugins.serve.wire import ollama_messages
from modelherd.types import ChatResponse

#: Ollama `options` renamed to the herd's common names; the rest pass as they are
_RENAMED = {"num_predict": "max_tokens"}
_ACCEPTED = frozenset(
    {"model", "messages", "stream", "format", "options", "keep_alive", "tools", "think"}
)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def parse_options(body: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(k for k in body if k not in _ACCEPTED)
    if unknown:
        raise Refusal(400, "unsupported_parameter", f"unsupported field(s): {', '.join(unknown)}")
    raw = body.get("options") or {}
    if not isinstance(raw, dict):
        raise Refusal(400, "invalid_options", '"options" must be an object')
    options: dict[str, Any] = {
        _RENAMED.get(str(k), str(k)): v for k, v in raw.items() if v is not None
    }
    fmt = body.get("format")
    if fmt == "json":
        options["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        options["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt},
        }
    elif fmt not in (None, ""):
        raise Refusal(400, "invalid_format", '"format" must be "json" or a JSON schema')
    if body.get("tools"):
        options["tools"] = body["tools"]
    return options


def _final(alias: str, response: ChatResponse, content: str) -> dict[str, Any]:
    nanos = int(response.latency_s * 1e9)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if response.tool_calls:
        message["tool_calls"] = [
            {"function": {"index": i, "name": c.name, "arguments": c.arguments}}
            for i, c in enumerate(response.tool_calls)
        ]
    return {
        "model": alias,
        "created_at": _now(),
        "message": message,
        "done": True,
        "done_reason": response.finish_reason if response.finish_reason != "unknown" else "stop",
        "total_duration": nanos,
        "load_duration": 0,
        "prompt_eval_count": response.usage.input_tokens,
        "prompt_eval_duration": 0,
        "eval_count": response.usage.output_tokens,
        "eval_duration": nanos,
    }


def _line(data: dict[str, Any]) -> bytes:
    return dumps(data) + b"\n"


async def chat(
    gateway: Gateway, request: web.Request, principal: Principal, body: dict[str, Any]
) -> web.StreamResponse:
    alias = gateway.check_model(principal, body.get("model"))
    request[MODEL] = alias
    messages = ollama_messages(body.get("messages"))
    options = parse_options(body)
    if body.get("stream") is False:
        response = await gateway.chat(principal, alias, messages, options)
        return json_response(
            _final(alias, response, response.content),
            headers={"x-herd-cache": response.cache_tier or "miss"},
        )
    first, items = await open_stream(gateway.stream(principal, alias, messages, options))
    out = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await out.prepare(request)
    final: ChatResponse | None = None
    try:
        item: Any = first
        while item is not None:
            if isinstance(item, ChatResponse):
                final = item
            elif isinstance(item, str) and item:
                if FIRST_CHUNK not in request:
                    request[FIRST_CHUNK] = time.perf_counter()
                await out.write(
                    _line(
                        {
                            "model": alias,
                            "created_at": _now(),
                            "message": {"role": "assistant", "content": item},
                            "done": False,
                        }
                    )
                )
            item = await anext(items, None)
    except (ConnectionResetError, OSError):
        raise
    except Exception as exc:
        refusal = refusal_for(exc)
        request[STREAM_STATUS] = refusal.status
        await out.write(_line(error_body("ollama", refusal)))
        return out
    finally:
        await items.aclose()
    assert final is not None
    await out.write(_line(_final(alias, final, "")))
    await out.write_eof()
    return out


async def tags(gateway: Gateway, principal: Principal) -> web.Response:
    modified = datetime.fromtimestamp(gateway.started_at, UTC).isoformat().replace("+00:00", "Z")
    models = []
    for alias in gateway.aliases(principal):
        spec = gateway.herd.resolve(alias)
        models.append(
            {
                "name": alias,
                "model": alias,
                "modified_at": modified,
                "size": 0,
                "digest": "",
                "details": {
                    "parent_model": "",
                    "format": spec.provider,
                    "family": spec.provider,
                    "families": [spec.provider],
                    "parameter_size": "",
                    "quantization_level": "",
                },
            }
        )
    return json_response({"models": models})
