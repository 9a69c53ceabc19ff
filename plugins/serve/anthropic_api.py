"""Anthropic-compatible route: POST /v1/messages (JSON and SSE), for the anthropic SDK.

The key comes in `x-api-key` (the SDK's way) or `Authorization: Bearer`. Streams
follow the documented event order (message_start, content_block_start, deltas,
content_block_stop, message_delta with usage.output_tokens, message_stop), which the
SDK's stream helper requires; an error after the start is an `event: error`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from modelherd.plugins.serve.auth import Principal, Refusal
from modelherd.plugins.serve.errors import error_body, refusal_for
from modelherd.plugins.serve.gateway import Gateway, open_stream
from modelherd.plugins.serve.jsonio import dumps, json_response
from modelherd.plugins.serve.state import FIRST_CHUNK, MODEL, REQUEST_ID, STREAM_STATUS
from modelherd.plugins.serve.wire import anthropic_messages
from modelherd.types import ChatResponse, Message

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_PASSED = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "stop_sequences": "stop",
}
_ACCEPTED = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stream",
        "metadata",
        "tools",
        "tool_choice",
        *_PASSED,
    }
)


def _system(raw: Any) -> list[Message]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return [Message(role="system", content=raw)]
    if isinstance(raw, list):
        text = "".join(
            str(p.get("text", "")) for p in raw if isinstance(p, dict) and p.get("type") == "text"
        )
        return [Message(role="system", content=text)]
    raise Refusal(400, "invalid_system", '"system" must be a string or a list of text blocks')


def parse(body: dict[str, Any]) -> tuple[list[Message], dict[str, Any]]:
    unknown = sorted(k for k in body if k not in _ACCEPTED)
    if unknown:
        raise Refusal(400, "unsupported_parameter", f"unsupported field(s): {', '.join(unknown)}")
    if not isinstance(body.get("max_tokens"), int):
        raise Refusal(400, "invalid_request", "max_tokens: Field required (an integer)")
    options: dict[str, Any] = {"max_tokens": body["max_tokens"]}
    for name, ours in _PASSED.items():
        if body.get(name) is not None:
            options[ours] = body[name]
    if body.get("tools"):
        options["tools"] = body["tools"]
    return _system(body.get("system")) + anthropic_messages(body.get("messages")), options


def _usage(response: ChatResponse) -> dict[str, int]:
    return {
        "input_tokens": response.usage.input_tokens,
        "output_tokens": response.usage.output_tokens,
    }


def message(response: ChatResponse, message_id: str, alias: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": alias,
        "content": _blocks(response),
        "stop_reason": _STOP.get(response.finish_reason, "end_turn"),
        "stop_sequence": None,
        "usage": _usage(response),
    }


def _blocks(response: ChatResponse) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if response.content or not response.tool_calls:
        blocks.append({"type": "text", "text": response.content})
    blocks += [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
        for c in response.tool_calls
    ]
    return blocks


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n"


async def messages(
    gateway: Gateway, request: web.Request, principal: Principal, body: dict[str, Any]
) -> web.StreamResponse:
    alias = gateway.check_model(principal, body.get("model"))
    request[MODEL] = alias
    msgs, options = parse(body)
    message_id = f"msg_{request[REQUEST_ID]}"
    if not body.get("stream"):
        response = await gateway.chat(principal, alias, msgs, options)
        return json_response(
            message(response, message_id, alias),
            headers={"x-herd-cache": response.cache_tier or "miss"},
        )
    first, items = await open_stream(gateway.stream(principal, alias, msgs, options))
    out = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await out.prepare(request)
    start = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": alias,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    await out.write(_event("message_start", {"type": "message_start", "message": start}))
    await out.write(
        _event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
    )
    final: ChatResponse | None = None
    try:
        item: Any = first
        while item is not None:
            if isinstance(item, ChatResponse):
                final = item
            elif isinstance(item, str) and item:
                if FIRST_CHUNK not in request:
                    request[FIRST_CHUNK] = time.perf_counter()
                delta = {"type": "text_delta", "text": item}
                await out.write(
                    _event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": 0, "delta": delta},
                    )
                )
            item = await anext(items, None)
    except (ConnectionResetError, OSError):
        raise
    except Exception as exc:
        refusal = refusal_for(exc)
        request[STREAM_STATUS] = refusal.status
        await out.write(_event("error", error_body("anthropic", refusal)))
        return out
    finally:
        await items.aclose()
    assert final is not None
    await out.write(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    for index, call in enumerate(final.tool_calls, start=1):
        block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        await out.write(
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        partial = {"type": "input_json_delta", "partial_json": json.dumps(call.arguments)}
        await out.write(
            _event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": partial},
            )
        )
        await out.write(
            _event("content_block_stop", {"type": "content_block_stop", "index": index})
        )
    await out.write(
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": _STOP.get(final.finish_reason, "end_turn"),
                    "stop_sequence": None,
                },
                "usage": _usage(final),
            },
        )
    )
    await out.write(_event("message_stop", {"type": "message_stop"}))
    await out.write_eof()
    return out
