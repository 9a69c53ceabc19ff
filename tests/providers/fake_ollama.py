"""Ollama's REST API (docs/api.md) on a loopback server: tags, show, ps, pull, chat,
generate (unload). State is real: a pull adds to the tags, a chat loads the model
into ps with its keep_alive, keep_alive 0 unloads it.

Chat scenarios by model: `qwen3:latest` answers with a <think> block,
`deepseek-r1:7b` with an unclosed one (done_reason "length"), `slow:latest` sleeps
3 s, `malformed:latest` sends a broken line, `truncated:latest` never sends done,
`midstream:latest` sends an error line mid-stream, `unfinished:latest` answers a
non-stream call with done false. Faults in front of the model (a proxy's answers):
`busy:latest` 429 with Retry-After 30, `flaky-busy:latest` 503 (Retry-After 0.05)
once, `locked:latest` 401, `reset:latest` a TCP RST, `cut-body:latest` a short body. `ghost:latest` is listed but /api/generate answers 404 for it (unload). `slow-think:latest` streams `thinking` lines for
~0.9 s before the answer. Text is escaped the way Ollama
escapes it (`<` as \\u003c). Pulling `nope` fails mid-stream like the real server.

Tools (Ollama's `message.tool_calls`, arguments as objects, no ids): with `tools` in
the request and no `tool` message last, `tools-1:latest` calls the first tool,
`tools-2:latest` makes two calls, `tools-bad:latest` sends arguments that break the
schema, `tools-cut:latest` (streaming) sends a call and stops without `done`. Any
model answers "results: <each tool message>" after tool results, and "[N images]"
when the last user turn has images. `POST /api/embed` returns one deterministic
8-dimension vector per input.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from .loopback import Recorder, cut_off, sample_for_schema, vector_for

GB = 1_000_000_000
#: `slow-think:latest` streams this many `thinking` lines, this far apart, then answers
THINK_STEPS = 6
THINK_EVERY_S = 0.15


def _details(family: str, params: str, quant: str) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": params,
        "quantization_level": quant,
    }


INITIAL = {
    "llama3.2:latest": (int(2.0 * GB), _details("llama", "3.2B", "Q4_K_M"), 131072),
    "qwen3:latest": (int(5.2 * GB), _details("qwen3", "8.2B", "Q4_K_M"), 40960),
    "deepseek-r1:7b": (int(4.7 * GB), _details("qwen2", "7.6B", "Q4_K_M"), 131072),
    "slow:latest": (GB, _details("llama", "1B", "Q8_0"), 8192),
    "malformed:latest": (GB, _details("llama", "1B", "Q8_0"), 8192),
    "truncated:latest": (GB, _details("llama", "1B", "Q8_0"), 8192),
    "midstream:latest": (GB, _details("llama", "1B", "Q8_0"), 8192),
    "tools-1:latest": (GB, _details("llama", "1B", "Q8_0"), 8192),
    "tools-2:latest": (GB, _details("llama", "1B", "Q8_0"), 8192),
    "tools-bad:latest": (GB, _details("llama", "1B", "Q8_0"), 8192),
    "tools-cut:latest": (GB, _details("llama", "1B", "Q8_0"), 8192),
    "nomic-embed-text:latest": (GB // 4, _details("nomic-bert", "137M", "F16"), 2048),
    "unfinished:latest": (GB, _details("llama", "1B", "Q8_0"), 8192),
    "flaky-busy:latest": (GB, _details("llama", "1B", "Q8_0"), 8192),
    "slow-think:latest": (GB, _details("qwen3", "1B", "Q8_0"), 8192),
    "ghost:latest": (GB, _details("llama", "1B", "Q8_0"), 8192),
}
PULLABLE = {"phi4:latest": (int(9.1 * GB), _details("phi3", "14.7B", "Q4_K_M"), 16384)}


def _dumps(data: Any) -> str:
    # real Ollama escapes HTML-significant characters in its JSON
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _now() -> str:
    return datetime.now(UTC).isoformat()


class OllamaState:
    def __init__(self) -> None:
        self.pulled: dict[str, tuple[int, dict[str, Any], int]] = dict(INITIAL)
        self.loaded: dict[str, datetime] = {}


def make_app(recorder: Recorder) -> web.Application:
    state = OllamaState()

    def not_found(name: str) -> web.Response:
        return web.json_response(
            {"error": f'model "{name}" not found, try pulling it first'}, status=404
        )

    async def tags(request: web.Request) -> web.Response:
        recorder.add(request, {})
        models = [
            {
                "name": n,
                "model": n,
                "modified_at": "2026-01-02T03:04:05Z",
                "size": size,
                "digest": f"{abs(hash(n)):064x}"[:64],
                "details": det,
            }
            for n, (size, det, _ctx) in state.pulled.items()
        ]
        return web.json_response({"models": models})

    async def show(request: web.Request) -> web.Response:
        body = await request.json()
        recorder.add(request, body)
        name = body["model"]
        if name not in state.pulled:
            return web.json_response({"error": f"model '{name}' not found"}, status=404)
        _size, det, ctx = state.pulled[name]
        arch = det["family"]
        return web.json_response(
            {
                "modelfile": "FROM x",
                "parameters": 'stop "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": det,
                "modified_at": "2026-01-02T03:04:05Z",
                "model_info": {
                    "general.architecture": arch,
                    "general.parameter_count": 3212749888,
                    f"{arch}.context_length": ctx,
                },
                "capabilities": ["completion", "tools"] + (["thinking"] if "qwen" in arch else []),
            }
        )

    async def ps(request: web.Request) -> web.Response:
        recorder.add(request, {})
        now = datetime.now(UTC)
        state.loaded = {n: t for n, t in state.loaded.items() if t > now}
        models = []
        for name, expires in state.loaded.items():
            size, det, _ctx = state.pulled[name]
            models.append(
                {
                    "name": name,
                    "model": name,
                    "size": size + GB // 2,
                    "digest": "d" * 64,
                    "details": det,
                    "expires_at": expires.isoformat(),
                    "size_vram": size // 2,
                    "context_length": 4096,
                }
            )
        return web.json_response({"models": models})

    async def pull(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        recorder.add(request, body)
        name = body["model"] if ":" in body["model"] else body["model"] + ":latest"
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)

        async def line(data: dict[str, Any]) -> None:
            await response.write((_dumps(data) + "\n").encode())

        await line({"status": "pulling manifest"})
        if name not in PULLABLE and name not in state.pulled:
            await line({"error": "pull model manifest: file does not exist"})
            return response
        size, det, ctx = PULLABLE.get(name) or state.pulled[name]
        for digest, total in (("sha256:" + "a" * 64, size), ("sha256:" + "b" * 64, 1024)):
            for done in (0, total // 2, total):
                await line(
                    {
                        "status": f"pulling {digest[7:19]}",
                        "digest": digest,
                        "total": total,
                        "completed": done,
                    }
                )
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            await line({"status": status})
        state.pulled[name] = (size, det, ctx)
        return response

    def keep(name: str, keep_alive: Any) -> None:
        if keep_alive in (0, "0", "0s"):
            state.loaded.pop(name, None)
            return
        seconds = 300.0
        if isinstance(keep_alive, int | float):
            seconds = float(keep_alive) if keep_alive >= 0 else 10**6
        elif isinstance(keep_alive, str) and keep_alive[:-1].isdigit():
            seconds = float(keep_alive[:-1]) * {"s": 1, "m": 60, "h": 3600}.get(keep_alive[-1], 1)
        state.loaded[name] = datetime.now(UTC) + timedelta(seconds=seconds)

    def tool_calls_for(body: dict[str, Any]) -> list[dict[str, Any]] | None:
        tools = body.get("tools") or []
        name = body["model"]
        if not tools or body["messages"][-1]["role"] == "tool" or not name.startswith("tools-"):
            return None
        first = tools[0]["function"]
        calls = [(first["name"], sample_for_schema(first.get("parameters") or {}))]
        if name == "tools-2:latest":
            second = tools[1]["function"] if len(tools) > 1 else first
            calls.append((second["name"], sample_for_schema(second.get("parameters") or {})))
        elif name == "tools-bad:latest":
            calls = [(first["name"], {"unexpected": True})]
        return [{"function": {"name": n, "arguments": a}} for n, a in calls]

    def answer(body: dict[str, Any]) -> tuple[str, str | None, str]:
        name = body["model"]
        opts = body.get("options") or {}
        if body["messages"][-1]["role"] == "tool":
            done = [m["content"] for m in body["messages"] if m["role"] == "tool"]
            return "results: " + "; ".join(done), None, "stop"
        fmt = body.get("format")
        if isinstance(fmt, dict):
            return json.dumps(sample_for_schema(fmt)), None, "stop"
        if fmt == "json":
            return '{"ok": true}', None, "stop"
        last_user = [m for m in body["messages"] if m["role"] == "user"][-1]
        last = last_user["content"]
        if last_user.get("images"):
            last += f" [{len(last_user['images'])} images]"
        if name == "qwen3:latest":
            if body.get("think"):
                return "Paris.", "recall geography", "stop"
            return "<think>\nrecall geography\n</think>\n\nParis.", None, "stop"
        if name == "deepseek-r1:7b":
            return "<think>still weighing it up", None, "length"
        if opts.get("num_predict") == 1:
            return "echo", None, "length"
        return f"echo: {last}", None, "stop"

    def final(name: str, done_reason: str, content: str = "") -> dict[str, Any]:
        return {
            "model": name,
            "created_at": _now(),
            "message": {"role": "assistant", "content": content},
            "done": True,
            "done_reason": done_reason,
            "total_duration": 2_500_000_000,
            "load_duration": 1_200_000_000,
            "prompt_eval_count": 26,
            "prompt_eval_duration": 300_000_000,
            "eval_count": 9,
            "eval_duration": 900_000_000,
        }

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        count = recorder.add(request, body)
        name = body["model"]
        fault = _fault(request, name, count)
        if fault is not None:
            return await fault
        if name not in state.pulled:
            return not_found(name)
        if name == "slow:latest":
            await asyncio.sleep(3)
        if name == "malformed:latest":
            return web.Response(
                text='{"model": "malformed:latest", "message": {', content_type="application/json"
            )
        keep(name, body.get("keep_alive"))
        calls = tool_calls_for(body)
        if calls:
            return await tool_reply(request, body, calls)
        content, thinking, reason = answer(body)
        if body.get("stream", True) is False:
            out = final(name, reason, content)
            if name == "unfinished:latest":  # a 200 that is not the final answer
                out.update(done=False, done_reason=None)
            if thinking:
                out["message"]["thinking"] = thinking
            return web.Response(text=_dumps(out), content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        if name == "slow-think:latest":  # a reasoning model thinking for a while
            for _ in range(THINK_STEPS):
                message = {"role": "assistant", "content": "", "thinking": "step "}
                line = {"model": name, "created_at": _now(), "message": message, "done": False}
                await response.write((_dumps(line) + "\n").encode())
                await asyncio.sleep(THINK_EVERY_S)
        if thinking:
            await response.write(
                (
                    _dumps(
                        {
                            "model": name,
                            "created_at": _now(),
                            "message": {"role": "assistant", "content": "", "thinking": thinking},
                            "done": False,
                        }
                    )
                    + "\n"
                ).encode()
            )
        for i in range(0, len(content), 3):
            await response.write(
                (
                    _dumps(
                        {
                            "model": name,
                            "created_at": _now(),
                            "message": {"role": "assistant", "content": content[i : i + 3]},
                            "done": False,
                        }
                    )
                    + "\n"
                ).encode()
            )
            if name == "midstream:latest" and i >= 3:
                await response.write(b'{"error":"llama runner process has terminated"}\n')
                return response
        if name != "truncated:latest":
            await response.write((_dumps(final(name, reason)) + "\n").encode())
        return response

    async def tool_reply(
        request: web.Request, body: dict[str, Any], calls: list[dict[str, Any]]
    ) -> web.StreamResponse:
        name = body["model"]
        message = {"role": "assistant", "content": "", "tool_calls": calls}
        if body.get("stream", True) is False:
            out = final(name, "stop")
            out["message"] = message
            return web.Response(text=_dumps(out), content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for call in calls:  # Ollama sends each call whole, in a chunk of its own
            chunk = {
                "model": name,
                "created_at": _now(),
                "message": {"role": "assistant", "content": "", "tool_calls": [call]},
                "done": False,
            }
            await response.write((_dumps(chunk) + "\n").encode())
            if name == "tools-cut:latest":
                return response  # no more calls and no done line
        await response.write((_dumps(final(name, "stop")) + "\n").encode())
        return response

    async def embed(request: web.Request) -> web.Response:
        body = await request.json()
        recorder.add(request, body)
        name = body["model"]
        if name not in state.pulled:
            return not_found(name)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response(
            {
                "model": name,
                "embeddings": [vector_for(text) for text in inputs],
                "total_duration": 14_000_000,
                "load_duration": 1_000_000,
                "prompt_eval_count": sum(len(text.split()) for text in inputs),
            }
        )

    async def generate(request: web.Request) -> web.Response:
        body = await request.json()
        recorder.add(request, body)
        name = body["model"]
        if name not in state.pulled or name == "ghost:latest":  # ghost: listed, not served
            return not_found(name)
        keep(name, body.get("keep_alive"))
        unloaded = body.get("keep_alive") in (0, "0")
        return web.json_response(
            {
                "model": name,
                "created_at": _now(),
                "response": "",
                "done": True,
                "done_reason": "unload" if unloaded else "load",
            }
        )

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.6"})

    async def refuse(status: int, error: str, headers: dict[str, str]) -> web.Response:
        return web.json_response({"error": error}, status=status, headers=headers)

    def _fault(request: web.Request, name: str, count: int) -> Any:
        """A proxy or server fault in front of the model, picked by name."""
        if name in ("reset:latest", "cut-body:latest"):
            return cut_off(request, name.split(":")[0])
        if name == "busy:latest":
            return refuse(429, "server busy, please try again", {"Retry-After": "30"})
        if name == "flaky-busy:latest" and count == 1:
            return refuse(503, "server overloaded", {"Retry-After": "0.05"})
        if name == "locked:latest":
            return refuse(401, "unauthorized", {})
        return None

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_post("/api/show", show)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/pull", pull)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/embed", embed)
    app.router.add_get("/api/version", version)
    return app
