--[[ unpin: a pinned run's transaction did not commit (rolled back, or its drainer died before
COMMIT): the run goes back to ready, unchanged, to be drained again.

KEYS: 1 ready, 2 leases, 3 holders
ARGV: 1 now_ms, 2.. pairs of run, holder (the exact `token:txid` the caller settled)
returns: how many runs went back (a run whose holder changed meanwhile is left alone)
]]
local k = {ready = KEYS[1], leases = KEYS[2], holders = KEYS[3]}
local now_ms, back = tonumber(ARGV[1]), 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', k.holders, ARGV[i]) == ARGV[i + 1] then
    take_back(k, ARGV[i], now_ms)
    back = back + 1
  end
end
return back
