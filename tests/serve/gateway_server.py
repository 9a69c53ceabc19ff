"""`herd serve` in-process on loopback, in its own thread and event loop.

The official SDKs talk to it over real HTTP exactly as they would to the vendor; the
herd behind it is whatever the test builds (MockModels, or a provider pointed at a
loopback fake vendor).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from modelherd import Herd
from modelherd.plugins.serve.admin import make_record
from modelherd.plugins.serve.gateway import Gateway
from modelherd.plugins.serve.server import build_gateway, make_runner
from modelherd.plugins.serve.settings import ServeSettings


class GatewayServer:
    def __init__(self, herd: Herd, keys_path: Path, **settings: Any) -> None:
        self.settings = ServeSettings(port=0, keys_path=str(keys_path), **settings)
        self.herd = herd
        self.gateway: Gateway = build_gateway(herd, self.settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def key(
        self,
        tenant: str = "alice",
        models: list[str] | None = None,
        expires: str | None = None,
        admin: bool = False,
    ) -> str:
        record, token = make_record(tenant, models, expires, admin=admin)
        self.gateway.auth.store.add(record)
        return token

    async def _start(self) -> None:
        self._runner = make_runner(self.gateway)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1]

    def start(self) -> GatewayServer:
        self._thread.start()
        self.run(self._start())
        return self

    def run(self, coro: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def drain(self) -> float:
        """What SIGTERM does: refuse new work, let in-flight calls finish, close."""

        async def go() -> float:
            started = time.monotonic()
            self.gateway.draining = True
            assert self._runner is not None
            await self._runner.cleanup()
            self._runner = None
            return time.monotonic() - started

        return float(self.run(go(), timeout=self.settings.drain_s + 10))

    def stop(self) -> None:
        async def go() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            await self.herd.aclose()

        try:
            self.run(go())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
