"""Request coalescing: identical calls already in flight share one upstream call.

The first caller for a key runs the call; later callers with the same key wait for
its outcome and get the same answer or the same error. Only deterministic requests
are coalesced (see `cache.is_deterministic`): sharing one sample between callers who
asked for independent samples would be wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Coalescer:
    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[object]] = {}
        #: how many calls joined an existing flight (a metric and a test hook)
        self.joined = 0

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        existing = self._inflight.get(key)
        if existing is not None:
            self.joined += 1
            # shield: one waiter being cancelled must not cancel the shared call
            return await asyncio.shield(existing)  # type: ignore[return-value]
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await call()
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                # mark retrieved: if nobody joined, asyncio must not warn
                future.exception()
            raise
        else:
            future.set_result(result)
            return result
        finally:
            self._inflight.pop(key, None)

    def __len__(self) -> int:
        return len(self._inflight)
