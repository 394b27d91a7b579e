--[[ pin: the drainer is about to write rows in Postgres transaction `txid`; fence its entries.

Only runs still held by `token` are pinned (and their lease renewed); the rest were taken back
after their lease expired, and may have changed since: the caller must not write them. From here
on, mutations of a pinned run wait for the transaction's outcome instead of changing the entry.

KEYS: 1 leases, 2 holders
ARGV: 1 token, 2 txid, 3 now_ms, 4 lease_ms, 5.. runs
returns: the runs pinned (a subset of ARGV 5.., in order)
]]
local pinned = {}
local holder_value = ARGV[1] .. ':' .. ARGV[2]
local lease_until = tonumber(ARGV[3]) + tonumber(ARGV[4])
for i = 5, #ARGV do
  local run = ARGV[i]
  if holds(redis.call('HGET', KEYS[2], run), ARGV[1]) then
    redis.call('HSET', KEYS[2], run, holder_value)
    redis.call('ZADD', KEYS[1], lease_until, run)
    pinned[#pinned + 1] = run
  end
end
return pinned
