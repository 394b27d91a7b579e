--[[ drain_rate: a token bucket shared by every drainer process (GCRA), at the allowed drain rate, so
the write rate into Postgres stays under that rate however many drainers run.

The allowed rate is MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC in fixed mode. In adaptive mode it is the
shared rate that drain_adapt.lua moves between the floor and that ceiling (the ceiling while no round
has reported). Drainers reserve a round's rows before they lease it (so a lease never waits on the
limiter), and give back what they did not use (a round may find fewer rows than it reserved). A
round is round_ms of the rate, so the limiter's granularity follows the rate, whatever it is; at low
rates a round stretches up to longest_ms to hold min_rows (a round's fixed cost, its transaction and
its scripts, then spreads over more rows); the grants of any second stay within the rate plus
longest_ms of it.

KEYS: 1 the bucket's theoretical arrival time (ms), 2 the shared rate (HASH: rate, epoch),
      3 this minute's drain samples (HASH: rate_sum, rate_n; 2 h TTL)
ARGV: 1 now_ms, 2 rows (positive: at most this many; negative: give back unused rows),
      3 ceiling (rows/s), 4 floor (rows/s), 5 mode ('adaptive' | 'fixed'), 6 round_ms,
      7 with negative rows: the rate they were granted at ('' for the current one),
      8 longest_ms, 9 min_rows
returns: {wait_ms, rows, rate, epoch}
  wait_ms 0 when granted: `rows` (at least 1) may be written now; else the milliseconds to wait
  before asking again (rows 0). rate: the allowed rate (rows/s, text); epoch: the shared rate's
  cuts so far (the round reports with it, so that a cut answers each slowdown once). A grant is given
  only once earlier grants are paid off, so over any interval the rows granted stay within
  rate x interval plus one round. Giving back never moves the bucket before now (unused time is not
  banked). Each grant adds the rate to this minute's samples (the dashboard's line).
]]
local now = tonumber(ARGV[1])
local rows, ceiling, floor = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local rate, epoch = ceiling, 0
if ARGV[5] == 'adaptive' then
  local state = redis.call('HMGET', KEYS[2], 'rate', 'epoch')
  if state[1] then
    rate = math.min(ceiling, math.max(floor, tonumber(state[1])))
  end
  epoch = tonumber(state[2] or '0')
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if rows < 0 then
  local at_rate = tonumber(ARGV[7] ~= nil and ARGV[7] ~= '' and ARGV[7] or rate)
  local back = math.max(now, tat + rows * 1000 / at_rate)
  if back > now then
    redis.call('SET', KEYS[1], tostring(back), 'PX', math.ceil(back - now) + 1000)
  else
    redis.call('DEL', KEYS[1])
  end
  return {0, rows, tostring(rate), epoch}
end
if tat > now then
  return {math.ceil(tat - now), 0, tostring(rate), epoch}
end
local round_ms = math.max(tonumber(ARGV[6]), math.min(tonumber(ARGV[8]), tonumber(ARGV[9]) * 1000 / rate))
local granted = math.max(1, math.min(rows, math.floor(rate * round_ms / 1000 + 1e-9)))
local next_tat = now + granted * 1000 / rate
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(next_tat - now) + 1000)
redis.call('HINCRBYFLOAT', KEYS[3], 'rate_sum', rate)
redis.call('HINCRBY', KEYS[3], 'rate_n', 1)
redis.call('PEXPIRE', KEYS[3], 7200000)
return {0, granted, tostring(rate), epoch}
