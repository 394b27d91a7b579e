--[[ retry: a leased entry could not be written; put it back with a backoff.

KEYS: 1 entry, 2 leases, 3 ready, 4 holders
ARGV: 1 run, 2 now_ms, 3 backoff_ms, 4 error (JSON text), 5 token (the caller's lease),
      6 '1' to count the attempt ('0' when the cause was not the entry: the database was unreachable)
returns: the entry's attempts after this one, or -1 when the caller no longer held the lease
(another drainer took it back, or it was acked) or holds it pinned (its transaction's outcome is not
known: see releases in lib/lease.lua): then nothing changes.
]]
if not releases(redis.call('HGET', KEYS[4], ARGV[1]), ARGV[5]) then
  return -1
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
local attempts
if ARGV[6] == '1' then
  attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
else
  attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
end
redis.call('HSET', KEYS[1], 'last_error', ARGV[4])
redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
return attempts
