--[[ listing: a page of one environment's waiting runs by trigger time, strictly beyond a cursor.

The listing ZSET orders runs by (score = trigger time in ms, member = run id): the order the API
lists in. Many runs may share one millisecond (a burst), so a cursor is a (score, member) pair and
the page starts by rank, found with a binary search inside the cursor's millisecond; resuming from
the score alone would repeat or skip runs of that millisecond.

KEYS: 1 listing
ARGV: 1 direction ('desc': newest first, beyond = older; 'asc': beyond = newer), 2 limit,
      3 cursor score ('' for none: start at the newest, or oldest), 4 cursor member,
      5 floor score ('' for none: desc never goes below it, asc never above it)
returns: flat {member, score, member, score, ...} in the direction's order (at most limit pairs)
]]
local key, desc, limit = KEYS[1], ARGV[1] == 'desc', tonumber(ARGV[2])
local total = redis.call('ZCARD', key)

-- Rank (0-based, ascending) of the first element not before (score, member) in ascending order.
local function rank_of(score, member)
  local lo = redis.call('ZCOUNT', key, '-inf', '(' .. score)
  local hi = lo + redis.call('ZCOUNT', key, score, score)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if redis.call('ZRANGE', key, mid, mid)[1] < member then
      lo = mid + 1
    else
      hi = mid
    end
  end
  return lo
end

local first, last
if desc then
  last = total - 1
  if ARGV[3] ~= '' then
    last = rank_of(ARGV[3], ARGV[4]) - 1  -- strictly older than the cursor
  end
  first = math.max(0, last - limit + 1)
  if ARGV[5] ~= '' then
    first = math.max(first, redis.call('ZCOUNT', key, '-inf', '(' .. ARGV[5]))
  end
else
  first = 0
  if ARGV[3] ~= '' then
    first = rank_of(ARGV[3], ARGV[4])
    if first < total and redis.call('ZRANGE', key, first, first)[1] == ARGV[4]
        and tonumber(redis.call('ZSCORE', key, ARGV[4])) == tonumber(ARGV[3]) then
      first = first + 1  -- strictly newer than the cursor
    end
  end
  last = math.min(total - 1, first + limit - 1)
  if ARGV[5] ~= '' then
    last = math.min(last, redis.call('ZCOUNT', key, '-inf', ARGV[5]) - 1)
  end
end
if last < first then
  return {}
end
local page = redis.call('ZRANGE', key, first, last, 'WITHSCORES')
if not desc then
  return page
end
local reversed = {}
for i = #page - 1, 1, -2 do
  reversed[#reversed + 1] = page[i]
  reversed[#reversed + 1] = page[i + 1]
end
return reversed
