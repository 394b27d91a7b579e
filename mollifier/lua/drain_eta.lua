--[[ drain_eta: publish every environment's drain curve (mollifier/priority.py), replacing the last
set, unless another drainer published one within min_interval_ms.

KEYS: 1 the curves (HASH: field per environment → JSON segments, plus `at` → when published, ms)
ARGV: 1 now_ms, 2 ttl_ms (the curves vanish when no drainer publishes: no drain, no estimate),
      3 min_interval_ms, 4.. field, value pairs
returns: 1 when published, 0 when a fresher set was there
]]
local now = tonumber(ARGV[1])
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or '0')
if now - at < tonumber(ARGV[3]) and now >= at then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'at', ARGV[1])
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
