--[[ unpark: an operator retries a parked entry: it goes back to ready with its attempts reset.

KEYS: 1 entry, 2 ready, 3 parked (the organisation's), 4 envs, 5 stats
ARGV: 1 run, 2 now_ms, 3 env (the entry's)
returns: {1, activated_gen} ('' unless the organisation went from idle to active: the caller then
         indexes it), or {0} when the run is not parked
]]
if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then
  return {0}
end
redis.call('HSET', KEYS[1], 'attempts', '0')
redis.call('HDEL', KEYS[1], 'terminal_error', 'parked_at_ms')
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[1])
local was_idle = redis.call('SCARD', KEYS[4]) == 0
local activated = ''
if redis.call('SADD', KEYS[4], ARGV[3]) == 1 and was_idle then
  activated = tostring(redis.call('HINCRBY', KEYS[5], 'gen', 1))
end
return {1, activated}
