"""The Anthropic Messages API wire format, as documented, on a loopback server.

The `model` field picks the scenario: `err-401`, `claude-sonnet-9` (404, unknown
model), `err-429` (retry-after 7), `flaky-529` (overloaded once, then OK), `err-500`,
`slow` (3 s), `malformed`, `html`, `truncated` (stream without message_delta),
`stream-error` (an `event: error` mid-stream), `drop` (the connection dies mid-stream),
`thinker` (a thinking block before the text), `unfinished` (a 200 with stop_reason
null), `reset` (TCP RST, no response), `cut-body` (a body shorter than its
Content-Length), `echo-key` (a 400 that echoes the key back), `slow-think` / `slow-pings` (streams
that think — thinking deltas / only pings — for ~0.9 s before the text). Anything else echoes the last user turn
(image blocks as `[image/png]` or `[<url>]`).

Tools (Anthropic's `tool_use` / `tool_result` blocks): with `tools` in the request and
a last user turn that holds no `tool_result`, `tools-1` calls the first tool (or the
one `tool_choice` names; any model does with tool_choice "any" or "tool"), `tools-2`
makes two parallel calls, `tools-bad` sends input that breaks the schema, `tools-cut`
(streaming) drops the connection inside a call's `input_json_delta` fragments. After
tool results the answer is "results: <each tool_result content>".
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from .loopback import Recorder, cut_off, sample_for_schema

API_KEY = "sk-ant-test-0123456789abcdef"
#: `slow-think` / `slow-pings` streams: this many thinking deltas (or pings), this far apart
THINK_STEPS = 6
THINK_EVERY_S = 0.15
MODELS = ["claude-sonnet-4-6", "claude-opus-4-6", "claude-haiku-4-5", "echo-claude"]


def _error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_e1"}
    return web.json_response(
        body, status=status, headers={"request-id": "req_e1", **(headers or {})}
    )


def _authorized(request: web.Request) -> bool:
    """The key in x-api-key (the classic header) or as a bearer token (what SDK 2.x sends)."""
    bearer = request.headers.get("Authorization", "")
    return request.headers.get("x-api-key") == API_KEY or bearer == f"Bearer {API_KEY}"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    out = []
    for block in content:
        if block["type"] == "text":
            out.append(block["text"])
        elif block["type"] == "image":
            source = block["source"]
            out.append(f"[{source.get('media_type') or source.get('url')}]")
    return "".join(out)


def _results(body: dict[str, Any]) -> list[str]:
    last = body["messages"][-1]
    if last["role"] != "user" or isinstance(last["content"], str):
        return []
    return [b["content"] for b in last["content"] if b["type"] == "tool_result"]


def tool_uses_for(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    if not tools or choice["type"] == "none" or _results(body):
        return None
    model = body["model"]
    if choice["type"] == "tool":
        tools = [t for t in tools if t["name"] == choice["name"]]
    elif not model.startswith("tools-") and choice["type"] == "auto":
        return None
    first = tools[0]
    calls = [(first["name"], sample_for_schema(first["input_schema"]))]
    if model == "tools-2" and not choice.get("disable_parallel_tool_use"):
        second = tools[1] if len(tools) > 1 else first
        calls.append((second["name"], sample_for_schema(second["input_schema"])))
    elif model == "tools-bad":
        calls = [(first["name"], {"unexpected": True})]
    return [
        {"type": "tool_use", "id": f"toolu_{i}", "name": n, "input": a}
        for i, (n, a) in enumerate(calls)
    ]


def _answer(body: dict[str, Any]) -> str:
    fmt = (body.get("output_config") or {}).get("format")
    if fmt:
        return json.dumps(sample_for_schema(fmt["schema"]))
    results = _results(body)
    if results:
        return "results: " + "; ".join(results)
    last = _text([m for m in body["messages"] if m["role"] == "user"][-1]["content"])
    system = f"[{body['system']}] " if body.get("system") else ""
    return f"{system}echo: {last}"


def make_app(recorder: Recorder) -> web.Application:
    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        count = recorder.add(request, body)
        if not _authorized(request) or not request.headers.get("anthropic-version"):
            return _error(401, "authentication_error", "invalid x-api-key")
        model = body["model"]
        if model == "err-401":
            return _error(401, "authentication_error", "invalid x-api-key")
        if model == "claude-sonnet-9":
            return _error(404, "not_found_error", f"model: {model}")
        if model == "echo-key":  # a vendor (or proxy) that echoes the request's key back
            key = request.headers.get("x-api-key") or request.headers.get("Authorization", "")
            return _error(400, "invalid_request_error", f"bad request from {key}")
        if model == "err-400":
            return _error(400, "invalid_request_error", "max_tokens: Field required")
        if model == "err-429":
            return _error(
                429,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
                {"retry-after": "7", "anthropic-ratelimit-requests-remaining": "0"},
            )
        if model == "flaky-529" and count == 1:
            return _error(529, "overloaded_error", "Overloaded", {"retry-after": "0.05"})
        if model == "err-500":
            return _error(500, "api_error", "Internal server error")
        if model == "slow":
            await asyncio.sleep(3)
        if model in ("reset", "cut-body"):
            return await cut_off(request, model)
        if model == "malformed":
            return web.Response(
                text='{"id": "msg_1", "content": [', content_type="application/json"
            )
        if model == "html":
            return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")
        if body.get("stream"):
            return await _stream(request, body)
        content: list[dict[str, Any]] = []
        if model == "thinker":
            content.append({"type": "thinking", "thinking": "compare both", "signature": "sig"})
        uses = tool_uses_for(body)
        if uses:
            content += uses
        else:
            content.append({"type": "text", "text": _answer(body)})
        stop: str | None = "max_tokens" if body["max_tokens"] == 1 else "end_turn"
        if uses:
            stop = "tool_use"
        if model == "unfinished":
            stop = None  # a 200 whose answer was cut short upstream
        return web.json_response(
            {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 12,
                    "output_tokens": 6,
                    "cache_creation_input_tokens": 2,
                    "cache_read_input_tokens": 4,
                },
            },
            headers={"request-id": "req_ok1"},
        )

    async def _stream(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "request-id": "req_s1"}
        )
        await response.prepare(request)
        model = body["model"]

        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        await send(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_s1",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": model,
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 12,
                        "output_tokens": 1,
                        "cache_read_input_tokens": 4,
                        "cache_creation_input_tokens": 0,
                    },
                },
            },
        )
        uses = tool_uses_for(body)
        if uses:
            return await _stream_uses(request, response, send, uses, model)
        if model in ("slow-think", "slow-pings"):  # thinking (or only pings) for a while
            await _think_slowly(send, pings_only=model == "slow-pings")
        await send(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        await send("ping", {"type": "ping"})
        answer = _answer(body)
        for i in range(0, len(answer), 4):
            await send(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": answer[i : i + 4]},
                },
            )
            if i >= 4 and model == "stream-error":
                await send(
                    "error",
                    {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"},
                    },
                )
                return response
            if i >= 4 and model == "drop":
                assert request.transport is not None
                request.transport.abort()  # no terminating chunk: a dropped connection
                return response
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        if model == "truncated":
            return response
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 6},
            },
        )
        await send("message_stop", {"type": "message_stop"})
        return response

    async def _stream_uses(
        request: web.Request,
        response: web.StreamResponse,
        send: Any,
        uses: list[dict[str, Any]],
        model: str,
    ) -> web.StreamResponse:
        await send(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        await send(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Let me check."},
            },
        )
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        for offset, use in enumerate(uses):
            index = offset + 1  # block 0 is the text
            start = {**use, "input": {}}
            await send(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
            args = json.dumps(use["input"])
            for i in range(0, len(args), 3):
                await send(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": args[i : i + 3]},
                    },
                )
                if model == "tools-cut" and i >= 6:
                    assert request.transport is not None
                    request.transport.abort()  # the connection dies inside the arguments
                    return response
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 9},
            },
        )
        await send("message_stop", {"type": "message_stop"})
        return response

    async def _think_slowly(send: Any, *, pings_only: bool) -> None:
        """THINK_STEPS thinking deltas (or pings) THINK_EVERY_S apart, before the text."""
        if not pings_only:
            block = {"type": "thinking", "thinking": "", "signature": ""}
            start = {"type": "content_block_start", "index": 0, "content_block": block}
            await send("content_block_start", start)
        for _ in range(THINK_STEPS):
            if pings_only:
                await send("ping", {"type": "ping"})
            else:
                delta = {"type": "thinking_delta", "thinking": "step "}
                await send(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                )
            await asyncio.sleep(THINK_EVERY_S)
        if not pings_only:
            await send("content_block_stop", {"type": "content_block_stop", "index": 0})

    async def models(request: web.Request) -> web.Response:
        recorder.add(request, {})
        if not _authorized(request):
            return _error(401, "authentication_error", "invalid x-api-key")
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2026-01-01T00:00:00Z"}
            for m in MODELS
        ]
        return web.json_response(
            {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
        )

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", models)
    return app
