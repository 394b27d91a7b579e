--[[ ack: the runs' rows are committed in Postgres; release them from the buffer.

Only runs still held by the caller are acked (`expected`: the drainer's token, or the exact
`token:txid` a resolver settled): a drainer whose lease was taken back changes nothing. Each acked
entry's hash is kept for grace_ms marked materialised (reads racing the drain still find it, and
read the row), its snapshot is deleted, its idempotency lookup and batch slot are released, and the
organisation's buffered count and bytes drop (by the entry's own `bytes`). When the environment has
nothing ready or leased any more it leaves the organisation's active set; when the organisation has
no active environment left, the reply carries its generation so the caller can un-index it. The
queues, the holders and the counters are changed once for the whole call (lib/bulk.lua), the entries
one by one.

KEYS: 1 ready, 2 leases, 3 envs, 4 stats, 5 listing, 6 minute, 7 holders,
      then per run: entry, snapshot, row, idem, batch (idem/batch may be placeholders in the same slot)
ARGV: 1 now_ms, 2 grace_ms, 3 env, then per run: run, expected holder (same order as the per-run keys)
returns: {acked_count, idle_gen ('' while the organisation is still active), refused_count}
]]
local grace = tonumber(ARGV[2])
local acked, refused, freed = 0, 0, 0
local released = {}
for i = 4, #ARGV, 2 do
  local run, expected = ARGV[i], ARGV[i + 1]
  local base = 7 + (i - 4) / 2 * 5
  local entry, snapshot, row, idem, batch = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3], KEYS[base + 4], KEYS[base + 5]
  if not holds(redis.call('HGET', KEYS[7], run), expected) then
    refused = refused + 1
  else
    released[#released + 1] = run
    -- `run` is absent when the hash is gone (acked away meanwhile): only the lease is released.
    local state = redis.call('HMGET', entry, 'run', 'materialised', 'bytes', 'idem_key', 'batch_index')
    if state[1] and state[2] ~= '1' then
      redis.call('HSET', entry, 'materialised', '1', 'materialised_at_ms', ARGV[1])
      redis.call('PEXPIRE', entry, grace)
      -- The snapshot and the stored row go now: no reader renders a materialised entry (each reads
      -- the row instead), and they are most of the entry's bytes, which a fast drain would
      -- otherwise keep for grace_ms.
      redis.call('DEL', snapshot, row)
      freed = freed + tonumber(state[3] or '0')
      if state[4] and redis.call('GET', idem) == run then
        redis.call('DEL', idem)
      end
      local index = state[5]
      if index and index ~= '' and redis.call('HGET', batch, index) == run then
        redis.call('HDEL', batch, index)
      end
      acked = acked + 1
    end
  end
end
bulk('ZREM', KEYS[2], released)
bulk('HDEL', KEYS[7], released)
bulk('ZREM', KEYS[1], released)
bulk('ZREM', KEYS[5], released)
if acked > 0 then
  redis.call('HINCRBY', KEYS[4], 'buffered', -acked)
  redis.call('HINCRBY', KEYS[4], 'bytes', -freed)
  count(KEYS[6], 'drained', acked)
end
if redis.call('ZCARD', KEYS[1]) == 0 and redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[3])
end
local idle_gen = ''
if redis.call('SCARD', KEYS[3]) == 0 then
  idle_gen = redis.call('HGET', KEYS[4], 'gen') or '0'
end
return {acked, idle_gen, refused}
