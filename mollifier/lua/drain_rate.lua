--[[ drain_rate: a token bucket shared by every drainer process (GCRA), so the write rate into
Postgres stays under MOLLIFIER_DRAIN_MAX_ROWS_PER_SEC however many drainers run.

KEYS: 1 the bucket's theoretical arrival time (ms)
ARGV: 1 now_ms, 2 rows wanted, 3 rows per second
returns: 0 when granted (the rows may be written now), else the milliseconds to wait before asking
         again. A grant is given only once earlier grants are paid off, so over any interval the
         rows granted stay within rate x interval plus one request.
]]
local now = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > now then
  return math.ceil(tat - now)
end
local next_tat = now + tonumber(ARGV[2]) * 1000 / tonumber(ARGV[3])
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(next_tat - now) + 1000)
return 0
