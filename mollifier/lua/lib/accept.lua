--[[ Library: accepting an entry into the buffer (prepended to the scripts that use it).

accept_entry(k, a) -> reply table
  k.entry, k.snapshot, k.ready, k.listing, k.envs, k.stats, k.idem, k.claim, k.batch, k.row, k.keyed: key names (one slot)
  a.run, a.env, a.now_ms, a.cap, a.max_bytes (0: no byte cap), a.memory_full ('1': Redis is near its
  maxmemory, refuse new entries), a.snapshot, a.row ('' for none: see keys.row), a.fields (flat list of hash field/value pairs), a.idem_key,
  a.batch_index, a.claim_marker ('' or 'pending:<token>'), a.claim_ttl, a.marker_gen ('' or the
  generation of the environment's Postgres marker, as the caller read it before it looked for the
  key's holder among the rows)

A run with an idempotency key is accepted only while the environment's keyed marker (keys.keyed)
has the very generation the caller read: Postgres then knows that such a run may wait here, so a
keyed trigger that cannot reach Redis answers 503 instead of writing a row a buffered run's key may
already name; and the caller looked for the key's holder among the rows after that marker was
committed, so after any row written without the buffer's word (runs/services/keyed_markers.py).
A generation newer than the mirror's, and newer than any cleared (clear_keyed_marker.lua), sets it.
Otherwise nothing is written, and the reply asks the caller to make sure of Postgres's marker, look
again, and come back with its generation.

An entry's size is the bytes of its snapshot, its row and its hash's fields and values as accepted; it is
kept in the entry (field `bytes`) and summed in the organisation's stats (`bytes`, beside
`buffered`), so that ack and discard take back exactly what accept added (mutate.lua adjusts both
when tags or metadata change size).

Replies:
  {'accepted', activated_gen}   activated_gen: the org generation when the org went from idle to
                                active (the caller then indexes it in mollifier:orgs), else ''
  {'duplicate_run', run}        an entry with this run id exists (any state, also in grace)
  {'duplicate_idempotency', owner}  the idempotency key already belongs to a buffered run
  {'memory_full'}               Redis is near its maxmemory: nothing written (the trigger passes through)
  {'needs_marker'}              a keyed run, and the environment's keyed marker does not have a.marker_gen: nothing written
  {'over_cap', count, bytes, 'count'|'bytes'}  the organisation's buffer is full (runs, or bytes)
]]
local function accept_entry(k, a)
  if redis.call('EXISTS', k.entry) == 1 then
    return {'duplicate_run', a.run}
  end
  if a.idem_key ~= '' then
    local owner = redis.call('GET', k.idem)
    if owner then
      return {'duplicate_idempotency', owner}
    end
  end
  if a.memory_full == '1' then
    return {'memory_full'}
  end
  local stats = redis.call('HMGET', k.stats, 'buffered', 'bytes')
  local count, used = tonumber(stats[1] or '0'), tonumber(stats[2] or '0')
  local size = #a.snapshot + #a.row
  for i = 1, #a.fields do
    size = size + #a.fields[i]
  end
  if count >= a.cap then
    return {'over_cap', tostring(count), tostring(used), 'count'}
  end
  if a.max_bytes > 0 and used + size > a.max_bytes then
    return {'over_cap', tostring(count), tostring(used), 'bytes'}
  end
  if a.idem_key ~= '' then
    if a.marker_gen == '' then
      return {'needs_marker'}
    end
    local generation = tonumber(a.marker_gen)
    local marker = redis.call('HMGET', k.keyed, 'marker', 'cleared')
    local current = tonumber(marker[1] or '0')
    if generation > current and generation > tonumber(marker[2] or '0') then
      redis.call('HSET', k.keyed, 'marker', a.marker_gen)
      current = generation
    end
    if current ~= generation then
      return {'needs_marker'}
    end
  end

  redis.call('HSET', k.entry, 'bytes', size, unpack(a.fields))
  redis.call('SET', k.snapshot, a.snapshot)
  if a.row ~= '' then
    redis.call('SET', k.row, a.row)
  end
  redis.call('ZADD', k.ready, a.now_ms, a.run)
  redis.call('ZADD', k.listing, a.now_ms, a.run)
  redis.call('HINCRBY', k.stats, 'buffered', 1)
  redis.call('HINCRBY', k.stats, 'bytes', size)
  if a.idem_key ~= '' then
    redis.call('SET', k.idem, a.run)
  end
  if a.batch_index ~= '' then
    redis.call('HSET', k.batch, a.batch_index, a.run)
  end
  if a.claim_marker ~= '' and redis.call('GET', k.claim) == a.claim_marker then
    redis.call('SET', k.claim, a.run, 'EX', a.claim_ttl)  -- publish in the same step
  end

  local activated = ''
  -- Added, and now alone in the set: the organisation was idle.
  if redis.call('SADD', k.envs, a.env) == 1 and redis.call('SCARD', k.envs) == 1 then
    activated = tostring(redis.call('HINCRBY', k.stats, 'gen', 1))
  end
  return {'accepted', activated}
end
