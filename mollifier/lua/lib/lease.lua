--[[ Library: drain leases and their fences (prepended to the scripts that use them).

A drainer leases entries with a token of its own (pop.lua): the environment's `holders` hash maps
each leased run to `<token>`. Before it writes rows, the drainer pins its entries to its Postgres
transaction (pin.lua): the holder becomes `<token>:<txid>`. From then on only that transaction's
outcome decides: it committed (the row exists: ack) or it did not (back to ready). A lease that
expired before its pin can be taken back by anyone, after which the old drainer's pin, ack, retry
and fail all find a different holder and change nothing.

holds(holder, expected) -> bool
  expected is a token (the drainer: its own lease, pinned or not) or a whole `token:txid` (a
  resolver that saw that exact pin).
releases(holder, expected) -> bool
  retry, fail and park: only the exact holder. A drainer whose write failed gives back what it
  holds unpinned (its pins settled as not committed first); a pin whose transaction's outcome is not
  known (a commit whose answer was lost may yet commit) stays pinned, for whoever settles it.
is_pinned(holder) -> bool
take_back(k, run, now_ms)
  k.leases, k.holders, k.ready: move one leased run back to ready at now_ms, forgetting its holder.
]]
local function holds(holder, expected)
  if not holder or expected == '' then
    return false
  end
  return holder == expected or string.sub(holder, 1, #expected + 1) == expected .. ':'
end

local function releases(holder, expected)
  return expected ~= '' and holder == expected
end

local function is_pinned(holder)
  return holder ~= false and holder ~= nil and string.find(holder, ':', 1, true) ~= nil
end

local function take_back(k, run, now_ms)
  redis.call('ZREM', k.leases, run)
  redis.call('HDEL', k.holders, run)
  redis.call('ZADD', k.ready, now_ms, run)
end
