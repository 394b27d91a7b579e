--[[ pin: the drainer is about to write rows in Postgres transaction `txid`; fence its entries.

Only runs still held by `token` are pinned (and their lease renewed); the rest were taken back
after their lease expired, and may have changed since: the caller must not write them. From here
on, mutations of a pinned run wait for the transaction's outcome instead of changing the entry.

KEYS: 1 leases, 2 holders
ARGV: 1 token, 2 txid, 3 now_ms, 4 lease_ms, 5.. runs
returns: the runs pinned (a subset of ARGV 5.., in order)
]]
local pinned, holders, leases = {}, {}, {}
local holder_value = ARGV[1] .. ':' .. ARGV[2]
local lease_until = tonumber(ARGV[3]) + tonumber(ARGV[4])
for i = 5, #ARGV, 1000 do
  local last = math.min(i + 999, #ARGV)
  local current = redis.call('HMGET', KEYS[2], unpack(ARGV, i, last))
  for j = i, last do
    local run = ARGV[j]
    if holds(current[j - i + 1], ARGV[1]) then
      pinned[#pinned + 1] = run
      holders[#holders + 1] = run
      holders[#holders + 1] = holder_value
      leases[#leases + 1] = lease_until
      leases[#leases + 1] = run
    end
  end
end
bulk('HSET', KEYS[2], holders)
bulk('ZADD', KEYS[1], leases)
return pinned
