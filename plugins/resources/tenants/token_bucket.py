"""In-process limit primitives: a token bucket, a UTC-day counter, a waiting slot pool.

These are the single-process enforcement of tenant quotas (runtime.py), and each
process's share of a limit while Redis is down; redis_limits.py implements the same
three with atomic Redis scripts so that several processes share one limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from datetime import UTC, datetime, timedelta


class TokenBucket:
    """`rate` tokens per second, holding at most `capacity` (the burst)."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, cost: float = 1.0) -> float:
        """Take `cost` tokens: 0.0 when taken, else the seconds until they will be there."""
        self._refill(time.monotonic())
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate

    def wait_positive(self) -> float:
        """0.0 when the bucket is not in debt, else the seconds until it is out of it."""
        self._refill(time.monotonic())
        return 0.0 if self.tokens > 0 else (-self.tokens + 1e-9) / self.rate

    def charge(self, cost: float) -> None:
        """Take `cost` tokens even into debt (tokens known only after the call)."""
        self._refill(time.monotonic())
        self.tokens -= cost

    def refill_to(self, tokens: float) -> None:
        """Start from `tokens` now (what was left of the shared bucket, for our share)."""
        self.stamp = time.monotonic()
        self.tokens = min(self.capacity, tokens)


def seconds_to_utc_midnight(now: datetime | None = None) -> float:
    now = now or datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()


def utc_day() -> str:
    return datetime.now(UTC).strftime("%Y%m%d")


class DailyCounter:
    """Tokens used today (UTC); resets at midnight UTC."""

    __slots__ = ("reset_at", "used")

    def __init__(self) -> None:
        self.used = 0
        self.reset_at = time.time() + seconds_to_utc_midnight()

    def current(self) -> int:
        now = time.time()
        if now >= self.reset_at:  # a float compare per call, not a date format
            self.used = 0
            self.reset_at = now + seconds_to_utc_midnight()
        return self.used

    def add(self, amount: int) -> None:
        self.current()
        self.used += amount


class SlotPool:
    """At most `limit` holders; others wait in FIFO order, bounded by a timeout."""

    __slots__ = ("held", "limit", "waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, timeout: float) -> bool:
        if self.held < self.limit and not self.waiters:
            self.held += 1
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except TimeoutError:
            if future.done() and not future.cancelled():
                return True  # granted in the same instant the wait ran out
            future.cancel()
            return False
        finally:
            if future in self.waiters:
                self.waiters.remove(future)

    def release(self) -> None:
        while self.waiters:
            future = self.waiters.popleft()
            if not future.done():
                future.set_result(None)  # hand the slot over: `held` stays the same
                return
        self.held -= 1
