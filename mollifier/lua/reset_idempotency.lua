--[[ reset_idempotency: release an idempotency key held by a buffered run, and its pre-gate claim.

KEYS: 1 idem (lookup), 2 claim, 3 entry (of the owner the caller read), 4 leases
ARGV: 1 owner run id the caller read ('' when the lookup was empty)
returns: {'reset', run} | {'none'} (nothing held it) | {'busy'} (the owner is leased by a drainer) |
         {'moved'} (the lookup changed since the caller read it: read again)
]]
redis.call('DEL', KEYS[2])
local owner = redis.call('GET', KEYS[1])
if not owner then
  return {'none'}
end
if owner ~= ARGV[1] then
  return {'moved'}
end
if redis.call('EXISTS', KEYS[3]) == 0 or redis.call('HGET', KEYS[3], 'materialised') == '1' then
  redis.call('DEL', KEYS[1])
  return {'none'}
end
if redis.call('ZSCORE', KEYS[4], owner) then
  return {'busy'}
end
redis.call('HDEL', KEYS[3], 'idem_key', 'idem_expires_ms')
redis.call('DEL', KEYS[1])
return {'reset', owner}
