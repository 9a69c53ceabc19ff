"""The Lua scripts of the shared circuit breaker (shared.py has the key layout).

One script per change, so a check and its update are atomic across replicas; time is
Redis's (`TIME`), never a replica's clock.
"""

from __future__ import annotations

# Open (mode "open"), re-open after a failed probe ("reopen"), or count one failure
# and open when the replicas' failures inside the window reach the threshold ("fail").
# An open record whose cool-down has not ended is kept as it is (the first opener's
# evidence stands), except on "reopen". Returns {changed, now, until, version, why, by}.
REPORT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local mode = ARGV[1]
local cooldown = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local why = ARGV[4]
local by = ARGV[5]
local failures = tonumber(ARGV[6])
if mode == 'fail' then
  local window = tonumber(ARGV[7])
  redis.call('ZADD', KEYS[3], now, ARGV[9])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
  redis.call('PEXPIRE', KEYS[3], math.ceil(window * 1000) + 1000)
  failures = redis.call('ZCARD', KEYS[3])
  if failures < tonumber(ARGV[8]) then
    return {0, tostring(now), '0', 0, '', ''}
  end
  why = failures .. ' failures in ' .. ARGV[7] .. 's across replicas, last ' .. why
end
local cur = redis.call('HMGET', KEYS[1], 'until', 'version', 'why', 'by')
local cur_until = tonumber(cur[1] or '0')
if mode ~= 'reopen' and cur_until > now then
  return {0, tostring(now), tostring(cur_until), tonumber(cur[2] or '0'), cur[3], cur[4]}
end
local untl = now + cooldown
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'state', 'open', 'since', tostring(now), 'until', tostring(untl),
  'why', why, 'failures', failures, 'by', by)
redis.call('PEXPIRE', KEYS[1], math.ceil((cooldown + lease) * 1000))
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[10], cjson.encode({alias = ARGV[11], fp = ARGV[12], state = 'open',
  now = now, ['until'] = untl, why = why, by = by, version = version}))
return {1, tostring(now), tostring(untl), version, why, by}
"""

# The half-open probe lock: {1} this replica probes; {0, pttl_ms} another one does;
# {3, wait_s} the cool-down is not over by Redis's clock. With no open record (it
# expired unprobed, or a close was missed) the lock still has one holder: one probe.
CLAIM_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local untl = redis.call('HGET', KEYS[1], 'until')
if untl and tonumber(untl) > now then return {3, tostring(tonumber(untl) - now)} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, '0'} end
return {0, tostring(redis.call('PTTL', KEYS[2]))}
"""

# The probe succeeded: close, if this replica holds the probe lock (or none is held).
CLOSE_LUA = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[2], cjson.encode({alias = ARGV[3], fp = ARGV[4], state = 'closed',
  why = 'probe call succeeded', by = ARGV[1]}))
return 1
"""


# The probe is still out: extend this replica's lock, and the record it probes for.
RENEW_LUA = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""
