--[[ retry: a leased entry could not be written (a transient error); put it back with a backoff.

KEYS: 1 entry, 2 leases, 3 ready
ARGV: 1 run, 2 now_ms, 3 backoff_ms, 4 error (JSON text)
returns: the entry's attempts after this one, or 0 when the lease was no longer held (another
drainer reclaimed it, or it was acked): then nothing changes.
]]
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[4])
redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
return attempts
