--[[ pop: lease up to `limit` ready entries of one environment, oldest first, after moving entries
whose lease expired (a crashed or stuck drainer) back to ready.

KEYS: 1 ready, 2 leases
ARGV: 1 now_ms, 2 limit, 3 lease_ms
returns: {{run, ...}, reclaimed_count}
  The caller reads the leased entries next (HGETALL each); a leased entry is "draining": mutations
  answer busy until it is acked or its lease expires.
]]
local now_ms = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms)
for _, run in ipairs(expired) do
  redis.call('ZREM', KEYS[2], run)
  redis.call('ZADD', KEYS[1], now_ms, run)
end
local runs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]))
local lease_until = now_ms + tonumber(ARGV[3])
for _, run in ipairs(runs) do
  redis.call('ZREM', KEYS[1], run)
  redis.call('ZADD', KEYS[2], lease_until, run)
end
return {runs, #expired}
