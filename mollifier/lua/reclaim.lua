--[[ reclaim: take back one environment's expired, unpinned leases (a crashed or stalled drainer),
and report its expired pins for the caller to settle (see pop.lua).

KEYS: 1 ready, 2 leases, 3 holders
ARGV: 1 now_ms, 2 lease_ms
returns: {reclaimed_count, {run, holder, ...} (expired pins)}
]]
local now_ms = tonumber(ARGV[1])
local k = {ready = KEYS[1], leases = KEYS[2], holders = KEYS[3]}
local reclaimed, pinned = 0, {}
for _, run in ipairs(redis.call('ZRANGEBYSCORE', k.leases, '-inf', now_ms)) do
  local holder = redis.call('HGET', k.holders, run)
  if is_pinned(holder) then
    pinned[#pinned + 1] = run
    pinned[#pinned + 1] = holder
    redis.call('ZADD', k.leases, now_ms + tonumber(ARGV[2]), run)
  else
    take_back(k, run, now_ms)
    reclaimed = reclaimed + 1
  end
end
return {reclaimed, pinned}
