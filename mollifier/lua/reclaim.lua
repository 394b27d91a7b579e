--[[ reclaim: move one environment's expired leases (a crashed or stuck drainer) back to ready.

KEYS: 1 ready, 2 leases
ARGV: 1 now_ms
returns: how many leases were reclaimed
]]
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[1]))
for _, run in ipairs(expired) do
  redis.call('ZREM', KEYS[2], run)
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]), run)
end
return #expired
