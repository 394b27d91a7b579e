--[[ drain_adapt: one round's verdict moves the drain rate every drainer shares (AIMD), atomically.

Additive increase: a healthy round raises the rate by `rise` rows/s for every second since the last
report (from any drainer), so the climb is the same whether one drainer reports or ten. Multiplicative
decrease: a slow or failed round multiplies the rate by `keep`, once per slowdown: only a round
reserved at the current epoch (after the last cut) can cut, and a cut starts a new epoch. The rounds
that were already reserved or in flight when the rate was cut were sized at the old rate, so their
slowness says nothing about the new one: they are `held`, not counted again. The rate stays between
the floor and the ceiling (both passed in, so a changed setting applies at once).

KEYS: 1 the shared rate (HASH: rate, epoch, at, commit_ms; expires after ttl_ms without a report,
      which puts the rate back at the ceiling), 2 this minute's drain samples (HASH, 2 h TTL)
ARGV: 1 now_ms, 2 the round's epoch (from its grant, drain_rate.lua), 3 verdict: 'ok' | 'slow' |
      'error' | 'fixed' (fixed mode: record the latency, never move the rate), 4 the round's write
      latency in ms ('' when the write failed), 5 ceiling, 6 floor, 7 rise (rows/s per second),
      8 keep (the fraction of the rate a cut keeps, 0 < keep < 1), 9 ttl_ms
returns: {change, rate, epoch}: change 'rise' | 'cut' | 'held' | 'fixed'; rate as text
]]
local now, round_epoch, verdict = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local ceiling, floor = tonumber(ARGV[5]), tonumber(ARGV[6])
local state = redis.call('HMGET', KEYS[1], 'rate', 'epoch', 'at', 'commit_ms')
local rate = math.min(ceiling, math.max(floor, tonumber(state[1] or ceiling)))
local epoch = tonumber(state[2] or '0')
local at = tonumber(state[3] or now)
local change
if verdict == 'fixed' then
  change = 'fixed'
elseif verdict == 'ok' then
  rate = math.min(ceiling, rate + tonumber(ARGV[7]) * math.max(0, now - at) / 1000)
  change = 'rise'
elseif round_epoch >= epoch then
  rate = math.max(floor, rate * tonumber(ARGV[8]))
  epoch = epoch + 1
  change = 'cut'
  redis.call('HINCRBY', KEYS[2], 'cuts', 1)
else
  change = 'held'
end
if ARGV[4] ~= '' then
  local latency = tonumber(ARGV[4])
  local average = state[4] and (tonumber(state[4]) * 0.7 + latency * 0.3) or latency
  redis.call('HSET', KEYS[1], 'commit_ms', tostring(average))
  redis.call('HINCRBYFLOAT', KEYS[2], 'commit_sum', latency)
  redis.call('HINCRBY', KEYS[2], 'commit_n', 1)
end
redis.call('PEXPIRE', KEYS[2], 7200000)
if change ~= 'fixed' then
  redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'epoch', epoch, 'at', now)
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[9]))
return {change, tostring(rate), epoch}
