--[[ mutate: change a buffered run that is waiting (not leased, not materialised).

A run a drainer holds is `busy`. A lease that expired before its drainer pinned it is taken back
first (that drainer can no longer write or ack the run), then the change applies. A pinned run
answers `pinned` with its holder: the caller settles the drainer's transaction in Postgres (the
change then goes to the row, or the run is unpinned and the change retried).

The entry's `bytes`, and the organisation's in stats, follow the size of the fields it changes
(lib/accept.lua), so that ack and discard take back exactly what the entry holds.

Any change marks the run's stored row stale (keys.row, lib/row.lua): the drain builds the row from
the entry instead.

KEYS: 1 entry, 2 leases, 3 ready, 4 holders, 5 stats, 6 row
ARGV: 1 op, 2 env (the caller's: another environment's run is not_found), 3 run, 4 now_ms, 5.. op args
  cancel        5 reason                       first cancel wins; repeating it is applied again; a
                                               run already terminal (it reads SYSTEM_FAILURE) is
                                               finished: applied, nothing changed (as for a row)
  add_tags      5 tags (JSON array), 6 max     de-duplicated, in order; over max writes nothing
  set_delay     5 delay_until_ms ('' clears)
  set_metadata  5 expected version ('' for any), 6 metadata (JSON text), 7 metadata type
returns: {'applied'} | {'applied', new_metadata_version} | {'not_found'} | {'materialised'} |
         {'busy'} (leased by a drainer) | {'pinned', holder} | {'limit_exceeded', count} |
         {'conflict', current_version}
]]
local entry, op = KEYS[1], ARGV[1]

-- HSET of field/value pairs, keeping the entry's counted size (and its organisation's) exact.
local function set_counted(...)
  local pairs_ = {...}
  local delta = 0
  for i = 1, #pairs_, 2 do
    local old = redis.call('HGET', entry, pairs_[i])
    delta = delta + #pairs_[i + 1] - (old and #old or -#pairs_[i])
  end
  redis.call('HSET', entry, unpack(pairs_))
  mark_row_stale(KEYS[6])
  if delta ~= 0 and redis.call('HEXISTS', entry, 'bytes') == 1 then  -- entries from before byte counting: never counted
    redis.call('HINCRBY', entry, 'bytes', delta)
    redis.call('HINCRBY', KEYS[5], 'bytes', delta)
  end
end
if redis.call('EXISTS', entry) == 0 then
  return {'not_found'}
end
local state = redis.call('HMGET', entry, 'env', 'materialised')
if state[1] ~= ARGV[2] then
  return {'not_found'}
end
if state[2] == '1' then
  return {'materialised'}
end
local lease_until = redis.call('ZSCORE', KEYS[2], ARGV[3])
if lease_until then
  local holder = redis.call('HGET', KEYS[4], ARGV[3])
  if is_pinned(holder) then
    return {'pinned', holder}
  end
  if tonumber(lease_until) > tonumber(ARGV[4]) then
    return {'busy'}
  end
  take_back({leases = KEYS[2], holders = KEYS[4], ready = KEYS[3]}, ARGV[3], tonumber(ARGV[4]))
end

if op == 'cancel' then
  local state = redis.call('HMGET', entry, 'cancelled_at_ms', 'terminal_error')
  if not state[1] and not state[2] then
    set_counted('cancelled_at_ms', ARGV[4], 'cancel_reason', ARGV[5])
  end
  return {'applied'}
elseif op == 'add_tags' then
  local merged, seen = {}, {}
  -- cjson reads an empty JSON array as an empty table either way; readers treat {} as [].
  for _, source in ipairs({cjson.decode(redis.call('HGET', entry, 'tags') or '[]'), cjson.decode(ARGV[5])}) do
    for _, tag in ipairs(source) do
      if not seen[tag] then
        seen[tag] = true
        merged[#merged + 1] = tag
      end
    end
  end
  if #merged > tonumber(ARGV[6]) then
    return {'limit_exceeded', tostring(#merged)}
  end
  if #merged > 0 then
    set_counted('tags', cjson.encode(merged))
  end
  return {'applied'}
elseif op == 'set_delay' then
  set_counted('delay_until_ms', ARGV[5])
  return {'applied'}
elseif op == 'set_metadata' then
  local current = redis.call('HGET', entry, 'metadata_version') or '0'
  if ARGV[5] ~= '' and ARGV[5] ~= current then
    return {'conflict', current}
  end
  set_counted('metadata', ARGV[6], 'metadata_type', ARGV[7])
  return {'applied', tostring(redis.call('HINCRBY', entry, 'metadata_version', 1))}
end
return redis.error_reply('unknown mutate op ' .. op)
