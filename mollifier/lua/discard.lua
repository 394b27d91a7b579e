--[[ discard: an operator removes a parked entry for good (the command logs who and why). The run
never becomes a row; its idempotency key and batch slot are released and the organisation's count
and bytes drop. Only parked entries can be discarded: anything else still has a path to a row.

KEYS: 1 entry, 2 snapshot, 3 parked (the organisation's), 4 listing, 5 stats, 6 idem, 7 batch, 8 row
ARGV: 1 run
returns: 1, or 0 when the run is not parked
]]
if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then
  return 0
end
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('GET', KEYS[6]) == ARGV[1] then
  redis.call('DEL', KEYS[6])
end
local index = redis.call('HGET', KEYS[1], 'batch_index')
if index and index ~= '' and redis.call('HGET', KEYS[7], index) == ARGV[1] then
  redis.call('HDEL', KEYS[7], index)
end
redis.call('HINCRBY', KEYS[5], 'bytes', -tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0'))
redis.call('DEL', KEYS[1], KEYS[2], KEYS[8])
redis.call('HINCRBY', KEYS[5], 'buffered', -1)
return 1
