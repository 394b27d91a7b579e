--[[ reset_idempotency: release an idempotency key held by a buffered run, and its pre-gate claim.

Leases are handled as in mutate.lua: busy while held, taken back once expired unpinned, `pinned`
(with the holder) while a drainer's transaction decides.

KEYS: 1 idem (lookup), 2 claim, 3 entry (of the owner the caller read), 4 leases, 5 ready, 6 holders,
      7 row (of that owner: its stored row holds the key, so it is marked stale)
ARGV: 1 owner run id the caller read ('' when the lookup was empty), 2 now_ms
returns: {'reset', run} | {'none'} (nothing held it) | {'busy'} (the owner is leased by a drainer) |
         {'pinned', run, holder} | {'moved'} (the lookup changed since the caller read it: read again)
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
local lease_until = redis.call('ZSCORE', KEYS[4], owner)
if lease_until then
  local holder = redis.call('HGET', KEYS[6], owner)
  if is_pinned(holder) then
    return {'pinned', owner, holder}
  end
  if tonumber(lease_until) > tonumber(ARGV[2]) then
    return {'busy'}
  end
  take_back({leases = KEYS[4], holders = KEYS[6], ready = KEYS[5]}, owner, tonumber(ARGV[2]))
end
redis.call('HDEL', KEYS[3], 'idem_key', 'idem_expires_ms')
mark_row_stale(KEYS[7])
redis.call('DEL', KEYS[1])
return {'reset', owner}
