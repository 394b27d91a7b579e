--[[ drain_adapt: one round's report moves the drain rate every drainer shares (AIMD), atomically.

Health is the rounds' write latency, smoothed (`signal`: a moving average, weight 0.3 to the newest
round, over the rounds of the current epoch), against the target; a round the database refused
counts at once. A single slow round among fast ones does not cut the rate (it takes about 2.5 times
the target to lift the average over it from a healthy level); a slowdown that lasts does, within a
few rounds.

Additive increase: a healthy report raises the rate by `rise` rows/s for every second since the last
report of the current epoch (from any drainer), so the climb is the same whether one drainer reports
or ten. Multiplicative decrease: an unhealthy report multiplies the rate by `keep` and starts a new
epoch; the signal restarts at 80% of the target, so a round of the new epoch still well over the
target (about 1.5 times) cuts again at once, and a moderately slow one after a few rounds. Only
rounds reserved in the current epoch are counted: those reserved or in flight when the rate was cut
were sized at the old rate, so they say nothing about the new one (`held`); one slowdown is cut
once, however many drainers saw it. The rate stays between the floor and the ceiling (both passed
in, so a changed setting applies at once).

The hash also keeps what the dashboard and estimates read: `commit_ms` (the average latency of every
round, any epoch) and `drained` (rows per second the drainers actually wrote over the last window of
a second or more, at `drained_at`).

KEYS: 1 the shared rate (HASH: rate, epoch, at, signal, commit_ms, win_at, win_rows, drained,
      drained_at; expires after ttl_ms without a report, which puts the rate back at the ceiling),
      2 this minute's drain samples (HASH, 2 h TTL)
ARGV: 1 now_ms, 2 the round's epoch (from its grant, drain_rate.lua), 3 verdict: 'ok' (timed) |
      'error' (refused by the database) | 'fixed' (fixed mode: record, never move the rate),
      4 the round's write latency in ms ('' when it failed), 5 ceiling, 6 floor, 7 rise (rows/s per
      second), 8 keep (the fraction of the rate a cut keeps, 0 < keep < 1), 9 ttl_ms, 10 target_ms,
      11 rows the round wrote
returns: {change, rate, epoch}: change 'rise' | 'cut' | 'held' | 'fixed'; rate as text
]]
local now, round_epoch, verdict = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local latency = ARGV[4] ~= '' and tonumber(ARGV[4]) or nil
local ceiling, floor, target = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[10])
local s = redis.call('HMGET', KEYS[1], 'rate', 'epoch', 'at', 'signal', 'commit_ms', 'win_at', 'win_rows')
local rate = math.min(ceiling, math.max(floor, tonumber(s[1] or ceiling)))
local epoch = tonumber(s[2] or '0')
local at = tonumber(s[3] or now)
local signal = s[4] and tonumber(s[4]) or nil

-- What every report records, whatever its verdict.
if latency then
  local average = s[5] and (tonumber(s[5]) * 0.7 + latency * 0.3) or latency
  redis.call('HSET', KEYS[1], 'commit_ms', tostring(average))
  redis.call('HINCRBYFLOAT', KEYS[2], 'commit_sum', latency)
  redis.call('HINCRBY', KEYS[2], 'commit_n', 1)
end
local win_at, win_rows = tonumber(s[6] or '0'), tonumber(s[7] or '0') + tonumber(ARGV[11])
if now - win_at > 3000 or now < win_at then
  redis.call('HSET', KEYS[1], 'win_at', now, 'win_rows', tonumber(ARGV[11]))  -- idle: a new window
elseif now - win_at >= 1000 then
  redis.call('HSET', KEYS[1], 'drained', tostring(win_rows * 1000 / (now - win_at)), 'drained_at', now,
    'win_at', now, 'win_rows', 0)
else
  redis.call('HSET', KEYS[1], 'win_rows', win_rows)
end
redis.call('PEXPIRE', KEYS[2], 7200000)

local change
if verdict == 'fixed' then
  change = 'fixed'
elseif round_epoch < epoch then
  change = 'held'
else
  local unhealthy = verdict == 'error'
  if not unhealthy then
    signal = signal and (signal * 0.7 + latency * 0.3) or latency
    unhealthy = signal > target
  end
  if unhealthy then
    rate = math.max(floor, rate * tonumber(ARGV[8]))
    epoch = epoch + 1
    signal = target * 0.8
    change = 'cut'
    redis.call('HINCRBY', KEYS[2], 'cuts', 1)
  else
    rate = math.min(ceiling, rate + tonumber(ARGV[7]) * math.max(0, now - at) / 1000)
    change = 'rise'
  end
  redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'epoch', epoch, 'at', now, 'signal', tostring(signal))
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[9]))
return {change, tostring(rate), epoch}
