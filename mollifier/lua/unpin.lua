--[[ unpin: a pinned run's transaction did not commit (rolled back, or its drainer died before
COMMIT). Either the drainer that pinned it keeps its lease (it retries the write itself: `keep`),
or the run goes back to ready, unchanged, to be drained again.

KEYS: 1 ready, 2 leases, 3 holders
ARGV: 1 now_ms, 2 keep ('1': the pinning drainer keeps its lease, unpinned), 3.. pairs of run,
      holder (the exact `token:txid` the caller settled)
returns: how many runs were unpinned (a run whose holder changed meanwhile is left alone)
]]
local k = {ready = KEYS[1], leases = KEYS[2], holders = KEYS[3]}
local now_ms, back = tonumber(ARGV[1]), 0
for i = 3, #ARGV, 2 do
  local run, holder = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', k.holders, run) == holder then
    if ARGV[2] == '1' then
      redis.call('HSET', k.holders, run, string.sub(holder, 1, string.find(holder, ':', 1, true) - 1))
    else
      take_back(k, run, now_ms)
    end
    back = back + 1
  end
end
return back
