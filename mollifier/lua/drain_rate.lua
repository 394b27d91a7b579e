--[[ drain_rate: a token bucket shared by every drainer process (GCRA), so the write rate into
Postgres stays under MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC however many drainers run.

Drainers reserve a round's rows before they lease it (so a lease never waits on the limiter), and
give back what they did not use (a round may find fewer rows than it reserved).

KEYS: 1 the bucket's theoretical arrival time (ms)
ARGV: 1 now_ms, 2 rows (negative: give back unused rows), 3 rows per second
returns: 0 when granted (the rows may be written now), else the milliseconds to wait before asking
         again. A grant is given only once earlier grants are paid off, so over any interval the
         rows granted stay within rate x interval plus one request. Giving back never moves the
         bucket before now (unused time is not banked).
]]
local now = tonumber(ARGV[1])
local rows, rate = tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if rows < 0 then
  local back = math.max(now, tat + rows * 1000 / rate)
  if back > now then
    redis.call('SET', KEYS[1], tostring(back), 'PX', math.ceil(back - now) + 1000)
  else
    redis.call('DEL', KEYS[1])
  end
  return 0
end
if tat > now then
  return math.ceil(tat - now)
end
local next_tat = now + rows * 1000 / rate
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(next_tat - now) + 1000)
return 0
