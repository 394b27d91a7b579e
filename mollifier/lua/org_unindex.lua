--[[ org_unindex: drop an idle organisation from mollifier:orgs unless it became active again.

An accept that activates an organisation bumps its generation and re-indexes it with that score
(ZADD GT). Removing only when the indexed score is not newer than the idle generation the caller
saw makes a concurrent re-activation win, whichever order the two calls arrive in.

KEYS: 1 orgs index
ARGV: 1 org, 2 idle generation
returns: 1 when removed, else 0
]]
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
