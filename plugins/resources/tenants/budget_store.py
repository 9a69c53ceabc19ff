"""Where money budgets are counted: in this process, or in Redis for N processes.

Amounts are integers in nano-units of the currency (1e-9), so sums are exact and
Redis can add them with INCRBY. Each budget period has a spend counter and a hash
of in-flight reservations (call id -> "amount expiry"): a call is admitted only
while spend + in-flight reservations + its own estimate fit the limit, and the check
and the reservation are one atomic step (one Lua script, or no await in between),
so two processes sharing Redis get one combined budget, not two.

A call's estimate is the last cost of its alias, shared through the store. An alias
with no cost seen yet is a probe: it runs only while nothing else is in flight on
that budget (`admit` answers BUSY and the caller waits), so the first call's real
cost is known before anyone reserves against it. With costs that repeat, the limit
is exact; with costs that vary, a call can overshoot by its own misestimate.

Redis keys (under `prefix`, default `herd:budgets`):
  {prefix}:{scope}:{name}:{period}:{YYYYMMDD | YYYYMM}      int   nano-units spent
  {prefix}:{scope}:{name}:{period}:{YYYYMMDD | YYYYMM}:res  hash  reservations
  {prefix}:estimates                                        hash  alias -> last cost
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NANO = 1_000_000_000
#: what `admit` returns when a probe must wait for the calls in flight
BUSY = (-1, 0)


def to_nano(amount: float) -> int:
    return round(amount * NANO)


@dataclass(frozen=True, slots=True)
class Window:
    """One budget in one period: where it is counted and its limit (nano-units)."""

    key: str
    limit: int
    ttl_s: int


# KEYS: spend keys..., the estimates hash; ARGV: call_id, alias, lease_s, limits...
ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = #KEYS - 1
local estimate = tonumber(redis.call('HGET', KEYS[n + 1], ARGV[2]) or '0')
for i = 1, n do
  local key = KEYS[i]
  local spent = tonumber(redis.call('GET', key) or '0')
  local reserved = 0
  local inflight = 0
  local res = redis.call('HGETALL', key .. ':res')
  for j = 1, #res, 2 do
    local amount, expiry = string.match(res[j + 1], '(%S+) (%S+)')
    if tonumber(expiry) < now then
      redis.call('HDEL', key .. ':res', res[j])
    else
      reserved = reserved + tonumber(amount)
      inflight = inflight + 1
    end
  end
  local limit = tonumber(ARGV[3 + i])
  if spent + reserved >= limit or spent + reserved + estimate > limit then
    if inflight > 0 then return {2, i, tostring(spent)} end
    return {0, i, tostring(spent)}
  end
  if estimate == 0 and inflight > 0 then return {2, i, tostring(spent)} end
end
local entry = tostring(estimate) .. ' ' .. tostring(now + tonumber(ARGV[3]))
for i = 1, n do
  redis.call('HSET', KEYS[i] .. ':res', ARGV[1], entry)
  redis.call('EXPIRE', KEYS[i] .. ':res', math.ceil(tonumber(ARGV[3])) + 60)
end
return {1, 0, '0'}
"""

# KEYS: spend keys..., the estimates hash; ARGV: call_id, alias, amount, ttls...
# returns the new spend per key
CHARGE_LUA = """
local out = {}
local n = #KEYS - 1
for i = 1, n do
  local key = KEYS[i]
  redis.call('HDEL', key .. ':res', ARGV[1])
  local spent = redis.call('INCRBY', key, ARGV[3])
  redis.call('EXPIRE', key, ARGV[3 + i])
  out[i] = spent
end
if tonumber(ARGV[3]) > 0 then redis.call('HSET', KEYS[n + 1], ARGV[2], ARGV[3]) end
return out
"""


class LocalBudgetStore:
    """One process's budgets. Admission is atomic because nothing in it awaits."""

    def __init__(self) -> None:
        self.spent: dict[str, int] = {}
        self.reserved: dict[str, dict[str, int]] = {}
        self.estimates: dict[str, int] = {}

    async def admit(
        self, windows: list[Window], call_id: str, alias: str, lease_s: float
    ) -> tuple[int, int] | None:
        """None when admitted (and reserved); BUSY; or (index of the full window, spend)."""
        estimate = self.estimates.get(alias, 0)
        for index, window in enumerate(windows):
            spent = self.spent.get(window.key, 0)
            inflight = self.reserved.get(window.key, {})
            used = spent + sum(inflight.values())
            if used >= window.limit or used + estimate > window.limit:
                return BUSY if inflight else (index, spent)
            if estimate == 0 and inflight:
                return BUSY
        for window in windows:
            self.reserved.setdefault(window.key, {})[call_id] = estimate
        return None

    async def charge(
        self, windows: list[Window], call_id: str, alias: str, amount: int
    ) -> list[int]:
        out = []
        for window in windows:
            self.reserved.get(window.key, {}).pop(call_id, None)
            self.spent[window.key] = self.spent.get(window.key, 0) + amount
            out.append(self.spent[window.key])
        if amount > 0:
            self.estimates[alias] = amount
        return out

    async def aclose(self) -> None:
        return None


@dataclass
class RedisBudgetStore:
    """Budgets shared by every process and host using the same Redis."""

    url: str
    prefix: str
    timeout_s: float = 1.0
    client: Any = field(init=False)

    @property
    def estimates_key(self) -> str:
        return f"{self.prefix}:estimates"

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
        self, windows: list[Window], call_id: str, alias: str, lease_s: float
    ) -> tuple[int, int] | None:
        ok, index, spent = await self._admit(
            keys=[*(w.key for w in windows), self.estimates_key],
            args=[call_id, alias, lease_s, *(w.limit for w in windows)],
        )
        if int(ok) == 1:
            return None
        return BUSY if int(ok) == 2 else (int(index) - 1, int(float(spent)))

    async def charge(
        self, windows: list[Window], call_id: str, alias: str, amount: int
    ) -> list[int]:
        spent = await self._charge(
            keys=[*(w.key for w in windows), self.estimates_key],
            args=[call_id, alias, amount, *(w.ttl_s for w in windows)],
        )
        return [int(s) for s in spent]

    async def aclose(self) -> None:
        await self.client.aclose()
