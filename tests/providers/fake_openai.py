"""The OpenAI Chat Completions wire format, as documented, on a loopback server.

The `model` field picks the scenario, so one server serves every test:
`err-401`, `missing-model` (404), `err-429` (Retry-After), `flaky-429` (429 once, then
OK), `err-500`, `slow` (answers after 3 s), `malformed` (bad JSON, JSON content type),
`html` (200 text/html), `truncated` (a stream that stops without finish_reason or
[DONE]), `midstream-error` (an error object inside the stream), `reason` (a <think>
block), `unfinished` (a 200 with finish_reason null), `reset` (TCP RST, no response),
`cut-body` (a 200 whose body stops short of its Content-Length), `stream-not-object`
(a stream event that is JSON but not an object), `echo-key` (a 400
that echoes the Authorization header), `slow-think` / `slow-tags` (streams that reason
for ~0.9 s — reasoning_content deltas / `<think>` text — before answering). Any other model answers "echo: <last user message>" (images as
`[image/png]`).

Tools (OpenAI's `tool_calls` wire format): with `tools` in the request and no `tool`
message after the last user turn, `tools-1` calls the first tool (or the one
`tool_choice` names), `tools-2` makes two parallel calls, `tools-bad` sends
arguments that break the schema, `tools-cut` (streaming) stops in the middle of a
call's arguments. Arguments fit the schema (`sample_for_schema`) and stream in 3-char
fragments. After tool results the answer is "results: <each tool message>".
`POST /v1/embeddings` returns a deterministic 8-dimension vector per input.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from .loopback import Recorder, cut_off, sample_for_schema, vector_for

API_KEY = "sk-test-key-0123456789abcdef"
#: `slow-think` / `slow-tags` streams: this many reasoning deltas, this far apart
THINK_STEPS = 6
THINK_EVERY_S = 0.15
MODELS = ["gpt-5.4", "gpt-5.4-mini", "gpt-4o", "deepseek-chat", "echo-model"]


def _error(
    status: int,
    message: str,
    kind: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(
        body, status=status, headers={"x-request-id": "req_err", **(headers or {})}
    )


def _text(content: Any) -> str:
    """A message's content as text; image parts as [media type]."""
    if isinstance(content, str) or content is None:
        return content or ""
    out = []
    for part in content:
        if part["type"] == "text":
            out.append(part["text"])
        elif part["type"] == "image_url":
            url = part["image_url"]["url"]
            out.append(f"[{url[5:].split(';')[0]}]" if url.startswith("data:") else f"[{url}]")
    return "".join(out)


def tool_calls_for(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The calls this request gets (OpenAI form, arguments as JSON text), or None."""
    tools = body.get("tools") or []
    if not tools or body.get("tool_choice") == "none":
        return None
    if body["messages"][-1]["role"] == "tool":
        return None
    model = body["model"]
    choice = body.get("tool_choice")
    functions = [t["function"] for t in tools]
    if isinstance(choice, dict):
        functions = [f for f in functions if f["name"] == choice["function"]["name"]]
    first = functions[0]
    args = json.dumps(sample_for_schema(first.get("parameters") or {}))
    calls = [(first["name"], args)]
    if model == "tools-2":
        second = functions[1] if len(functions) > 1 else first
        calls.append(
            (second["name"], json.dumps(sample_for_schema(second.get("parameters") or {})))
        )
    elif model == "tools-bad":
        calls = [(first["name"], '{"unexpected": true}')]
    elif not model.startswith("tools-") and choice in (None, "auto"):
        return None
    return [
        {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
        for i, (n, a) in enumerate(calls)
    ]


def _answer(body: dict[str, Any]) -> str:
    model = body["model"]
    if body["messages"][-1]["role"] == "tool":
        done = [m["content"] for m in body["messages"] if m["role"] == "tool"]
        return "results: " + "; ".join(done)
    if model == "reason":
        return "<think>\nweigh the options\n</think>\n\nBUY"
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return json.dumps(sample_for_schema(fmt["json_schema"]["schema"]))
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return json.dumps({"ok": True})
    last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return f"echo: {_text(last)}"


def make_app(recorder: Recorder) -> web.Application:
    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        count = recorder.add(request, body)
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return _error(
                401,
                "Incorrect API key provided: sk-wron*****************cdef. You "
                "can find your API key at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        model = body["model"]
        if model == "err-401":
            return _error(
                401,
                f"Incorrect API key provided: {API_KEY[:8]}***.",
                "invalid_request_error",
                "invalid_api_key",
            )
        if model == "missing-model" or model.startswith("gpt-99"):
            return _error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        if model == "echo-key":  # a vendor (or proxy) that echoes the request's key back
            auth = request.headers.get("Authorization", "")
            return _error(400, f"bad request from {auth}", "invalid_request_error")
        if model == "err-400":
            return _error(
                400,
                "Invalid value for 'temperature': must be <= 2.",
                "invalid_request_error",
                "invalid_value",
            )
        if model == "err-429" or (model == "flaky-429" and count == 1):
            after = "0.05" if model == "flaky-429" else "7"
            return _error(
                429,
                "Rate limit reached for requests per min (RPM): Limit 3.",
                "requests",
                "rate_limit_exceeded",
                {
                    "retry-after": after,
                    "x-ratelimit-limit-requests": "3",
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": "20s",
                },
            )
        if model == "err-500" or (model == "flaky-500" and count == 1):
            return _error(
                500, "The server had an error while processing your request.", "server_error"
            )
        if model == "slow":
            await asyncio.sleep(3)
        if model in ("reset", "cut-body"):
            return await cut_off(request, model)
        if model == "malformed":
            return web.Response(
                text='{"id": "chatcmpl-1", "choices": [', content_type="application/json"
            )
        if model == "html":
            return web.Response(
                text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
            )
        if model == "nofields":
            return web.json_response({"id": "chatcmpl-x", "object": "chat.completion"})
        if body.get("stream"):
            return await _stream(request, body)
        calls = tool_calls_for(body)
        content: str | None = None if calls else _answer(body)
        finish: str | None = (
            "length" if body.get("max_completion_tokens", body.get("max_tokens")) == 1 else "stop"
        )
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if calls:
            message["tool_calls"] = calls
            finish = "tool_calls"
        if model == "unfinished":
            finish = None  # a 200 whose answer was cut short upstream
        return web.json_response(
            {
                "id": "chatcmpl-123",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fp_test",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": 11,
                    "completion_tokens": 5,
                    "total_tokens": 16,
                    "prompt_tokens_details": {"cached_tokens": 3},
                },
            },
            headers={"x-request-id": "req_ok"},
        )

    async def _stream(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "x-request-id": "req_stream"}
        )
        await response.prepare(request)
        model = body["model"]
        base = {
            "id": "chatcmpl-s1",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

        async def send(data: Any) -> None:
            text = data if isinstance(data, str) else json.dumps(data)
            await response.write(f"data: {text}\n\n".encode())

        await send(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            }
        )
        if model == "stream-not-object":  # valid JSON, but not a chunk object
            await send("[1, 2]")
            return response
        calls = tool_calls_for(body)
        if calls:
            return await _stream_calls(response, send, base, body, calls)
        if model in ("slow-think", "slow-tags"):  # a reasoning model thinking for a while
            await _think_slowly(send, base, tags=model == "slow-tags")
        answer = _answer(body)
        for i in range(0, len(answer), 4):
            await send(
                {
                    **base,
                    "choices": [
                        {"index": 0, "delta": {"content": answer[i : i + 4]}, "finish_reason": None}
                    ],
                }
            )
            if model == "midstream-error" and i >= 4:
                await send(
                    {
                        "error": {
                            "message": "The server had an error mid-stream.",
                            "type": "server_error",
                        }
                    }
                )
                return response
        if model == "truncated":
            return response  # the connection ends: no finish_reason, no [DONE]
        await send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await send(
                {
                    **base,
                    "choices": [],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
                }
            )
        await send("[DONE]")
        return response

    async def _think_slowly(send: Any, base: dict[str, Any], *, tags: bool) -> None:
        """THINK_STEPS reasoning deltas THINK_EVERY_S apart: DeepSeek's reasoning_content,
        or (tags) `<think>` text inside content, as DeepSeek-R1 on vLLM sends it."""
        steps = ["<think>"] * tags + ["step "] * THINK_STEPS + ["</think>"] * tags
        for step in steps:
            field = "content" if tags else "reasoning_content"
            delta = {field: step}
            await send({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            if step == "step ":
                await asyncio.sleep(THINK_EVERY_S)

    async def _stream_calls(
        response: web.StreamResponse,
        send: Any,
        base: dict[str, Any],
        body: dict[str, Any],
        calls: list[dict[str, Any]],
    ) -> web.StreamResponse:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        for index, call in enumerate(calls):
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            await send(chunk({"tool_calls": [head]}))
            args = call["function"]["arguments"]
            for i in range(0, len(args), 3):
                fragment = {"index": index, "function": {"arguments": args[i : i + 3]}}
                await send(chunk({"tool_calls": [fragment]}))
                if body["model"] == "tools-cut" and i >= 6:
                    return response  # the connection ends inside the arguments
        await send(chunk({}, "tool_calls"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await send(
                {
                    **base,
                    "choices": [],
                    "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29},
                }
            )
        await send("[DONE]")
        return response

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        recorder.add(request, body)
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": vector_for(text)}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(len(text.split()) for text in inputs)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def models(request: web.Request) -> web.Response:
        recorder.add(request, {})
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        return web.json_response(
            {
                "object": "list",
                "data": [
                    # Gemini's compatible endpoint lists ids as "models/<id>"
                    {
                        "id": ("models/" if request.path.startswith("/gemini") else "") + m,
                        "object": "model",
                        "created": 1,
                        "owned_by": "system",
                    }
                    for m in MODELS
                ],
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/gemini/v1/chat/completions", completions)
    app.router.add_get("/gemini/v1/models", models)
    app.router.add_post("/bare/v1/chat/completions", completions)  # a server without /models
    return app
