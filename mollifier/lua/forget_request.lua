--[[ forget_request: a request's attempt failed before its run was written (its transaction never
reached its commit); the request's key stops naming that run, so the request's retry makes its run.
Only while the key still names it: a later attempt may have taken the key meanwhile.

KEYS: 1 the request key
ARGV: 1 the run it named
returns: 1 when forgotten, else 0
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
