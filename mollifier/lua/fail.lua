--[[ fail: the entry can never become its intended row (attempts exhausted, a snapshot that cannot
be read). Mark it terminal and give it back after a backoff: its next drain writes a minimal
SYSTEM_FAILURE row from the envelope and acks it. Nothing leaves the buffer without a row.

KEYS: 1 entry, 2 leases, 3 ready, 4 holders, 5 row (marked stale: a failure row is built from the entry)
ARGV: 1 run, 2 now_ms, 3 backoff_ms, 4 error (JSON text), 5 token (the caller's lease)
returns: 1, or 0 when the caller no longer held the lease or the entry is gone or materialised
]]
if not releases(redis.call('HGET', KEYS[4], ARGV[1]), ARGV[5]) then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'materialised') == '1' then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'terminal_error', ARGV[4], 'last_error', ARGV[4])
mark_row_stale(KEYS[5])
redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
return 1
