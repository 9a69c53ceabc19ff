"""A real HTTP server on 127.0.0.1, run by aiohttp in its own thread and event loop.

Tests talk to it through the official SDKs exactly as they would to the vendor, so
the SDK's own parsing, error classes and streaming code are what get exercised.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web


class Recorder:
    """What the server saw: one (method, path, json body, headers) per request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}

    def add(self, request: web.Request, body: Any) -> int:
        entry = {
            "method": request.method,
            "path": request.path,
            "body": body,
            "headers": dict(request.headers),
        }
        self.requests.append(entry)
        key = f"{request.path}:{body.get('model') if isinstance(body, dict) else ''}"
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]

    def last(self, path: str) -> dict[str, Any]:
        return next(r for r in reversed(self.requests) if r["path"] == path)

    def clear(self) -> None:
        self.requests.clear()
        self.counts.clear()


class LoopbackServer:
    def __init__(self, make_app: Callable[[Recorder], web.Application]) -> None:
        self.recorder = Recorder()
        self._make_app = make_app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self._runner = web.AppRunner(
            self._make_app(self.recorder), access_log=None, shutdown_timeout=0.1
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self) -> LoopbackServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        asyncio.run_coroutine_threadsafe(_cancel_pending(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def _cancel_pending() -> None:
    """Handlers still sleeping (the `slow` scenarios) end with the server, quietly."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def free_port() -> int:
    """A port nothing listens on (for connection-refused tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample_for_schema(schema: dict[str, Any]) -> Any:
    """A value that satisfies a simple JSON schema (what a vendor's structured output returns)."""
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        return {k: sample_for_schema(v) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [sample_for_schema(schema.get("items", {"type": "string"}))]
    return {"integer": 7, "number": 0.5, "boolean": True, "null": None}.get(str(kind), "text")


def vector_for(text: str, dims: int = 8) -> list[float]:
    """A deterministic vector for `text`, as the fake servers' embeddings endpoints
    return it (so a test can recompute what it should get)."""
    import hashlib

    digest = hashlib.blake2b(text.encode(), digest_size=dims).digest()
    return [round(b / 255, 6) for b in digest]


async def cut_off(request: web.Request, how: str) -> web.StreamResponse:
    """A transport fault after the request arrived: `reset` sends a TCP RST before any
    response byte; `cut-body` sends a 200 promising a longer body than it writes, then
    closes (what a proxy timing out mid-body or a crashed worker looks like)."""
    import socket
    import struct

    transport = request.transport
    assert transport is not None
    if how == "reset":
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return web.StreamResponse()
    response = web.StreamResponse(
        headers={"Content-Type": "application/json", "Content-Length": "4096"}
    )
    await response.prepare(request)
    await response.write(b'{"id": "cut", "choices": [{"index": 0, "message": {"role"')
    await asyncio.sleep(0.01)
    transport.close()
    return response
