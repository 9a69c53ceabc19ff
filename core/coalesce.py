"""Request coalescing: identical calls already in flight share one upstream call.

The first caller for a key (the leader) runs the call inline — no extra task, so
the miss path stays as cheap as an uncoalesced call; later callers with the same
key wait for its outcome and get the same answer (each its own copy) or the same
error. Only requests with a key are coalesced (see `cache.coalesce_key` and
`TieredCache.key_for`): sharing one sample between callers who asked for
independent samples would be wrong.

Cancellation: a follower being cancelled never cancels the shared call (shield).
When the leader is cancelled, its followers were not: each of them runs the call
afresh (the first becomes the new leader) instead of seeing a CancelledError it
never asked for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


def _own_copy(result: Any) -> Any:
    """Followers get their own object: callers may mutate what they receive.

    A ChatResponse holds immutable values except `usage` and `provider_metrics`, so
    copying those two is a full copy at a third of deepcopy's cost.
    """
    copy = getattr(result, "model_copy", None)
    if not callable(copy):
        return result
    usage = getattr(result, "usage", None)
    if usage is not None and hasattr(result, "provider_metrics"):
        return copy(
            update={"usage": usage.model_copy(), "provider_metrics": dict(result.provider_metrics)}
        )
    return copy(deep=True)


class _Flight:
    """One call in flight. Its future is made only when a follower joins: most calls
    have none, and a future made, resolved and dropped on each of them costs ~1 µs
    (bench/overhead.py)."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] | None = None

    def joined(self) -> asyncio.Future[Any]:
        if self.future is None:
            self.future = asyncio.get_running_loop().create_future()
        return self.future


class Coalescer:
    def __init__(self, copy: Callable[[Any], Any] = _own_copy) -> None:
        self._inflight: dict[str, _Flight] = {}
        self._copy = copy
        #: how many calls joined an existing flight (a metric and a test hook)
        self.joined = 0
        #: how many calls ran upstream as leaders
        self.led = 0

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        result, _led = await self.run_led(key, call)
        return result

    async def run_led(self, key: str, call: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Like `run`, and say whether this caller led (ran the call) or followed."""
        while True:
            flight = self._inflight.get(key)
            if flight is None:
                break
            self.joined += 1
            existing = flight.joined()
            try:
                # shield: one waiter being cancelled must not cancel the shared call
                return cast(T, self._copy(await asyncio.shield(existing))), False
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if existing.cancelled() and task is not None and not task.cancelling():
                    continue  # the leader was cancelled, not us: run (or join) afresh
                raise
        mine = self._inflight[key] = _Flight()
        self.led += 1
        try:
            result = await call()
        except asyncio.CancelledError:
            if mine.future is not None:
                mine.future.cancel()
            raise
        except BaseException as exc:
            if mine.future is not None:
                mine.future.set_exception(exc)
                # mark retrieved: if every follower left, asyncio must not warn
                mine.future.exception()
            raise
        else:
            if mine.future is not None:
                mine.future.set_result(result)
            return result, True
        finally:
            if self._inflight.get(key) is mine:
                del self._inflight[key]

    def __len__(self) -> int:
        return len(self._inflight)
