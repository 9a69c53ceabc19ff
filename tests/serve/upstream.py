"""A loopback OpenAI-compatible upstream (what vLLM speaks) for the replica tests.

Model `drip` streams 20 chunks 0.1 s apart (so a replica can be killed mid-stream);
any other model answers "echo: <last user message>" at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web
from providers.loopback import Recorder


def _chunk(model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    body = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def make_app(recorder: Recorder) -> web.Application:
    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        recorder.add(request, body)
        model = body["model"]
        last = body["messages"][-1]["content"]
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-up",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"echo: {last}"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        pieces = [f"w{i} " for i in range(20)] if model == "drip" else [f"echo: {last}"]
        for piece in pieces:
            await response.write(_chunk(model, {"content": piece}, None))
            if model == "drip":
                await asyncio.sleep(0.1)
        await response.write(_chunk(model, {}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app
