--[[ pop_due: lease the runs of one environment whose delay is due (or nearly), ahead of its queue.

A delayed run waits in its environment's queue at its trigger time like any other. Once its delay
is (nearly) due it is late if it still waits, so the drain leases it first, before the weighted
shares (mollifier/priority.py): a due run is never stuck behind a young backlog, in its own
environment or in another one of higher weight. The organisation's `delayed` index (member
"<b64 env>:<run>", scored by delay_until_ms) is a hint kept beside the queues: the caller found these
members due in it. A member whose run is no longer queued (written, parked, or leased by the ordinary
pop) is dropped here; a run that is backing off (its not-before time still ahead) keeps its member
and waits for it.

KEYS: 1 delayed (the organisation's), 2 ready, 3 leases, 4 holders (the environment's)
ARGV: 1 now_ms, 2 lease_ms, 3 token (this lease's), 4 limit, 5.. member, run pairs (earliest due first)
returns: {run, ...} the runs leased (at most limit), with the token, as pop.lua leases them
]]
local now_ms, lease_ms, token, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local leased = {}
for i = 5, #ARGV, 2 do
  local member, run = ARGV[i], ARGV[i + 1]
  local not_before = redis.call('ZSCORE', KEYS[2], run)
  if not not_before then
    redis.call('ZREM', KEYS[1], member)
  elseif tonumber(not_before) <= now_ms and #leased < limit then
    redis.call('ZREM', KEYS[2], run)
    redis.call('ZADD', KEYS[3], now_ms + lease_ms, run)
    redis.call('HSET', KEYS[4], run, token)
    redis.call('ZREM', KEYS[1], member)
    leased[#leased + 1] = run
  end
end
return leased
