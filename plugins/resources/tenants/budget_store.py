"""Where money budgets are counted: in this process, or in Redis for N processes.

Amounts are integers in nano-units of the currency (1e-9), so sums are exact and
Redis can add them with INCRBY. Each budget period has a spend counter and a hash
of in-flight reservations (call id -> "amount expiry"): a call is admitted only
while spend + in-flight reservations + its own estimate fit the limit, and the check
and the reservation are one atomic step (one Lua script, or no await in between),
so two processes sharing Redis get one combined budget, not two.

Redis keys (under `prefix`, default `herd:budgets`):
  {prefix}:{scope}:{name}:{period}:{YYYYMMDD | YYYYMM}      int   nano-units spent
  {prefix}:{scope}:{name}:{period}:{YYYYMMDD | YYYYMM}:res  hash  reservations
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NANO = 1_000_000_000


def to_nano(amount: float) -> int:
    return round(amount * NANO)


@dataclass(frozen=True, slots=True)
class Window:
    """One budget in one period: where it is counted and its limit (nano-units)."""

    key: str
    limit: int
    ttl_s: int


# ARGV: call_id, estimate, lease_s, then one limit per key; KEYS: spend keys
ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local estimate = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local spent = tonumber(redis.call('GET', key) or '0')
  local reserved = 0
  local res = redis.call('HGETALL', key .. ':res')
  for j = 1, #res, 2 do
    local amount, expiry = string.match(res[j + 1], '(%S+) (%S+)')
    if tonumber(expiry) < now then
      redis.call('HDEL', key .. ':res', res[j])
    else
      reserved = reserved + tonumber(amount)
    end
  end
  local limit = tonumber(ARGV[3 + i])
  if spent + reserved >= limit or spent + reserved + estimate > limit then
    return {0, i, tostring(spent)}
  end
end
local entry = ARGV[2] .. ' ' .. tostring(now + tonumber(ARGV[3]))
for _, key in ipairs(KEYS) do
  redis.call('HSET', key .. ':res', ARGV[1], entry)
  redis.call('EXPIRE', key .. ':res', math.ceil(tonumber(ARGV[3])) + 60)
end
return {1, 0, '0'}
"""

# ARGV: call_id, amount, then one ttl per key; returns the new spend per key
CHARGE_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  redis.call('HDEL', key .. ':res', ARGV[1])
  local spent = redis.call('INCRBY', key, ARGV[2])
  redis.call('EXPIRE', key, ARGV[2 + i])
  out[i] = spent
end
return out
"""


class LocalBudgetStore:
    """One process's budgets. Admission is atomic because nothing in it awaits."""

    def __init__(self) -> None:
        self.spent: dict[str, int] = {}
        self.reserved: dict[str, dict[str, int]] = {}

    async def admit(
        self, windows: list[Window], call_id: str, estimate: int, lease_s: float
    ) -> tuple[int, int] | None:
        """None when admitted (and reserved), else (index of the full window, its spend)."""
        for index, window in enumerate(windows):
            spent = self.spent.get(window.key, 0)
            used = spent + sum(self.reserved.get(window.key, {}).values())
            if used >= window.limit or used + estimate > window.limit:
                return index, spent
        for window in windows:
            self.reserved.setdefault(window.key, {})[call_id] = estimate
        return None

    async def charge(self, windows: list[Window], call_id: str, amount: int) -> list[int]:
        out = []
        for window in windows:
            self.reserved.get(window.key, {}).pop(call_id, None)
            self.spent[window.key] = self.spent.get(window.key, 0) + amount
            out.append(self.spent[window.key])
        return out

    async def spent_now(self, window: Window) -> int:
        return self.spent.get(window.key, 0)

    async def aclose(self) -> None:
        return None


@dataclass
class RedisBudgetStore:
    """Budgets shared by every process and host using the same Redis."""

    url: str
    timeout_s: float = 1.0
    client: Any = field(init=False)

    def __post_init__(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.from_url(
            self.url,
            socket_connect_timeout=self.timeout_s,
            socket_timeout=self.timeout_s,
            decode_responses=True,
        )
        self._admit = self.client.register_script(ADMIT_LUA)
        self._charge = self.client.register_script(CHARGE_LUA)

    async def ping(self) -> None:
        await self.client.ping()

    async def admit(
        self, windows: list[Window], call_id: str, estimate: int, lease_s: float
    ) -> tuple[int, int] | None:
        ok, index, spent = await self._admit(
            keys=[w.key for w in windows],
            args=[call_id, estimate, lease_s, *(w.limit for w in windows)],
        )
        return None if int(ok) == 1 else (int(index) - 1, int(float(spent)))

    async def charge(self, windows: list[Window], call_id: str, amount: int) -> list[int]:
        spent = await self._charge(
            keys=[w.key for w in windows], args=[call_id, amount, *(w.ttl_s for w in windows)]
        )
        return [int(s) for s in spent]

    async def spent_now(self, window: Window) -> int:
        return int(await self.client.get(window.key) or 0)

    async def aclose(self) -> None:
        await self.client.aclose()
