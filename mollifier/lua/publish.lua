--[[ publish: the claim holder made its run; later same-key callers resolve to it.

KEYS: 1 claim
ARGV: 1 marker ('pending:<token>'), 2 run, 3 ttl_seconds
returns: 1, or 0 when the claim is no longer ours (it expired and another caller took it)
]]
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
