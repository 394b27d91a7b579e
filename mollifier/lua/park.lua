--[[ park: not even a minimal SYSTEM_FAILURE row could be written for this entry, again and again.
Stop retrying it: it leaves the drain (ready and leases) and waits in the organisation's parked set
for an operator (mollifier_parked: inspect, retry, discard with a reason). It stays readable and
counted against the organisation's cap, and listings still show it.

KEYS: 1 entry, 2 leases, 3 holders, 4 parked (the organisation's)
ARGV: 1 run, 2 now_ms, 3 error (JSON text), 4 token (the caller's lease)
returns: 1, or 0 when the caller no longer held the lease or the entry is gone or materialised
]]
if not releases(redis.call('HGET', KEYS[3], ARGV[1]), ARGV[4]) then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'materialised') == '1' then
  return 0
end
redis.call('HSET', KEYS[1], 'last_error', ARGV[3], 'parked_at_ms', ARGV[2])
redis.call('ZADD', KEYS[4], tonumber(ARGV[2]), ARGV[1])
return 1
