--[[ clear_keyed_marker: take away an environment's keyed marker (keys.keyed) once nothing of the
environment waits in the buffer, so that Postgres's marker of that generation can be deleted.

The Postgres marker says "runs with an idempotency key may wait in this environment's buffer": while
it exists, a keyed trigger that cannot reach Redis answers 503. It may go only when no such run can
be here, and none can be accepted later on the strength of it: the listing is empty (every entry of
the environment, parked ones too, is in it until acked), and ``cleared`` is raised to the
generation, so that a web process that made sure of it (or of an older one) before this, and comes
back with it, is told to make sure of a newer one (lib/accept.lua). Postgres's generations only
grow, so the caller deletes its marker only if it still has this generation.

KEYS: 1 keyed, 2 listing
ARGV: 1 generation (of Postgres's marker)
returns: 1 when cleared (the caller deletes Postgres's marker of that generation), else 0
]]
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local generation = tonumber(ARGV[1])
local marker = redis.call('HMGET', KEYS[1], 'marker', 'cleared')
if tonumber(marker[1] or '0') > generation then
  return 0  -- a newer marker: Postgres's is newer than the caller read
end
if tonumber(marker[2] or '0') < generation then
  redis.call('HSET', KEYS[1], 'cleared', ARGV[1])
end
redis.call('HDEL', KEYS[1], 'marker')
return 1
