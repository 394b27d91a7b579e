--[[ claim: serialise same-key triggers before the gate. The first caller owns the claim
('pending:<token>') until it publishes its run id or releases it.

KEYS: 1 claim, 2 idem (the buffered lookup of the same key: checked first, saving a round trip)
ARGV: 1 marker ('pending:<token>'), 2 ttl_seconds
returns: {'buffered', run} (a buffered run holds the key) | {'claimed'} (ours, also when re-claiming
         with our own token) | {'pending'} (another caller holds it) | {'resolved', run}
]]
local buffered = redis.call('GET', KEYS[2])
if buffered then
  return {'buffered', buffered}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', tonumber(ARGV[2])) then
  return {'claimed'}
end
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
  return {'claimed'}
end
if value == ARGV[1] then
  return {'claimed'}
end
if string.sub(value, 1, 8) == 'pending:' then
  return {'pending'}
end
return {'resolved', value}
