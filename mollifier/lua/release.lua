--[[ release: the claim holder failed; let the next caller claim.

KEYS: 1 claim
ARGV: 1 marker ('pending:<token>')
returns: 1, or 0 when the claim is no longer ours (nothing is deleted then)
]]
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
