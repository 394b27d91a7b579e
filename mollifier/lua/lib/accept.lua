--[[ Library: accepting an entry into the buffer (prepended to the scripts that use it).

accept_entry(k, a) -> reply table
  k.entry, k.snapshot, k.ready, k.listing, k.envs, k.stats, k.idem, k.claim, k.batch: key names (one slot)
  a.run, a.env, a.now_ms, a.cap, a.snapshot, a.fields (flat list of hash field/value pairs), a.idem_key,
  a.batch_index, a.claim_marker ('' or 'pending:<token>'), a.claim_ttl

Replies:
  {'accepted', activated_gen}   activated_gen: the org generation when the org went from idle to
                                active (the caller then indexes it in mollifier:orgs), else ''
  {'duplicate_run', run}        an entry with this run id exists (any state, also in grace)
  {'duplicate_idempotency', owner}  the idempotency key already belongs to a buffered run
  {'over_cap', count}           the organisation's buffer is full
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
  local count = tonumber(redis.call('HGET', k.stats, 'buffered') or '0')
  if count >= a.cap then
    return {'over_cap', tostring(count)}
  end

  redis.call('HSET', k.entry, unpack(a.fields))
  redis.call('SET', k.snapshot, a.snapshot)
  redis.call('ZADD', k.ready, a.now_ms, a.run)
  redis.call('ZADD', k.listing, a.now_ms, a.run)
  redis.call('HINCRBY', k.stats, 'buffered', 1)
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
  local was_idle = redis.call('SCARD', k.envs) == 0
  if redis.call('SADD', k.envs, a.env) == 1 and was_idle then
    activated = tostring(redis.call('HINCRBY', k.stats, 'gen', 1))
  end
  return {'accepted', activated}
end
