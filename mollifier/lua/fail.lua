--[[ fail: the entry can never become its intended row (attempts exhausted, a snapshot that cannot
be read). Mark it terminal and make it ready again at once: the next drain writes a SYSTEM_FAILURE
row from the envelope and acks it. Nothing leaves the buffer without a row.

KEYS: 1 entry, 2 leases, 3 ready
ARGV: 1 run, 2 now_ms, 3 error (JSON text)
returns: 1, or 0 when the entry is gone or already materialised
]]
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'materialised') == '1' then
  return 0
end
redis.call('HSET', KEYS[1], 'terminal_error', ARGV[3], 'last_error', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], tonumber(ARGV[2]), ARGV[1])
return 1
