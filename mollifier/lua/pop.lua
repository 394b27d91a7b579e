--[[ pop: lease up to `limit` ready entries of one environment, oldest first, after taking back
expired leases.

An expired lease that was never pinned goes back to ready (its drainer crashed or stalled before
writing; its token no longer holds). An expired lease that is pinned to a Postgres transaction is
not taken back: only that transaction's outcome can settle it. Such pins are returned for the caller
to settle (sink.settle), and their lease is pushed out by lease_ms so each is reported once per lease.

KEYS: 1 ready, 2 leases, 3 holders
ARGV: 1 now_ms, 2 limit, 3 lease_ms, 4 token (this lease's, unique per pop)
returns: {{run, ...}, reclaimed_count, {run, holder, run, holder, ...} (expired pins)}
  The caller reads the leased entries next (read.lua); a leased entry is "draining": mutations
  answer busy until it is acked, given back, or its lease expires unpinned.
]]
local now_ms, lease_ms = tonumber(ARGV[1]), tonumber(ARGV[3])
local k = {ready = KEYS[1], leases = KEYS[2], holders = KEYS[3]}
local reclaimed, pinned = 0, {}
for _, run in ipairs(redis.call('ZRANGEBYSCORE', k.leases, '-inf', now_ms)) do
  local holder = redis.call('HGET', k.holders, run)
  if is_pinned(holder) then
    pinned[#pinned + 1] = run
    pinned[#pinned + 1] = holder
    redis.call('ZADD', k.leases, now_ms + lease_ms, run)
  else
    take_back(k, run, now_ms)
    reclaimed = reclaimed + 1
  end
end
local runs = redis.call('ZRANGEBYSCORE', k.ready, '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]))
local leases, holders = {}, {}
for _, run in ipairs(runs) do
  leases[#leases + 1] = now_ms + lease_ms
  leases[#leases + 1] = run
  holders[#holders + 1] = run
  holders[#holders + 1] = ARGV[4]
end
bulk('ZREM', k.ready, runs)
bulk('ZADD', k.leases, leases)
bulk('HSET', k.holders, holders)
return {runs, reclaimed, pinned}
