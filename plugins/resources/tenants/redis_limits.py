"""Tenant limits shared by every process through Redis, with atomic Lua scripts.

Each check-and-update is one script, so N replicas calling at once still give a
tenant its limit, not N times it. Time comes from Redis (`TIME`), not from each
host's clock. `redis.asyncio` is imported when the first limiter is built.

Keys (all under `prefix`, default `herd:tenants`, disjoint from the cache's
`herd:cache:`; `{tenant}` is a configured name, or `~unknown` for the one bucket every
unconfigured tenant shares):
  {prefix}:{tenant}:rpm           hash  request bucket (tokens, ts)
  {prefix}:{tenant}:tpm           hash  token bucket (tokens, ts)
  {prefix}:{tenant}:day:{YYYYMMDD} int  tokens used that UTC day (expires after 2 days)
  {prefix}:{tenant}:slots         zset  running calls (member = call id, score = lease end)
"""

from __future__ import annotations

from typing import Any

from modelherd.plugins.resources.tenants.token_bucket import utc_day

# mode "take": need `cost` tokens; "debt": always subtract; "positive": need > 0 tokens
BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local mode = ARGV[4]
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1])
local ts = tonumber(v[2])
if tokens == nil then tokens = cap; ts = now end
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local ok = 0
local wait = 0
if mode == 'debt' then
  tokens = tokens - cost; ok = 1
elseif mode == 'positive' then
  if tokens > 0 then ok = 1 else wait = (0.000001 - tokens) / rate end
elseif tokens >= cost then
  tokens = tokens - cost; ok = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(cap / rate) + 60)
return {ok, tostring(wait), tostring(tokens)}
"""

SLOT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 60)
  return 1
end
return 0
"""

DAY_ADD_LUA = """
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 172800)
return used
"""


class RedisLimits:
    """The Redis half of tenant enforcement. Every method may raise redis errors;
    the caller (runtime.py) falls back to its local share when it does."""

    def __init__(self, url: str, prefix: str = "herd:tenants", timeout: float = 1.0) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.prefix = prefix
        self.client: Any = aioredis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout, decode_responses=True
        )
        self._bucket = self.client.register_script(BUCKET_LUA)
        self._slot = self.client.register_script(SLOT_LUA)
        self._day_add = self.client.register_script(DAY_ADD_LUA)

    def key(self, tenant: str, what: str) -> str:
        return f"{self.prefix}:{tenant}:{what}"

    async def ping(self) -> None:
        await self.client.ping()

    async def reset(self) -> None:
        """Drop pooled connections: after an outage they are dead, and each would fail
        once (a second outage, spurious) before the pool noticed."""
        await self.client.connection_pool.disconnect()

    async def bucket(
        self, tenant: str, what: str, rate: float, capacity: float, cost: float, mode: str
    ) -> tuple[float, float]:
        """Run the bucket script: (0.0 when allowed else seconds to wait, tokens left)."""
        ok, wait, tokens = await self._bucket(
            keys=[self.key(tenant, what)], args=[rate, capacity, cost, mode]
        )
        return (0.0 if int(ok) == 1 else max(float(wait), 1e-3)), float(tokens)

    async def day_used(self, tenant: str) -> int:
        value = await self.client.get(self.key(tenant, f"day:{utc_day()}"))
        return int(value or 0)

    async def day_add(self, tenant: str, amount: int) -> None:
        await self._day_add(keys=[self.key(tenant, f"day:{utc_day()}")], args=[amount])

    async def try_slot(self, tenant: str, limit: int, call_id: str, lease_s: float) -> bool:
        got = await self._slot(keys=[self.key(tenant, "slots")], args=[limit, call_id, lease_s])
        return int(got) == 1

    async def release_slot(self, tenant: str, call_id: str) -> None:
        await self.client.zrem(self.key(tenant, "slots"), call_id)

    async def aclose(self) -> None:
        await self.client.aclose()
