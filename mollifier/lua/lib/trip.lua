--[[ Library: the trip evaluator (prepended to the scripts that use it).

evaluate_trip(rate_key, tripped_key, now_ms, window_ms, threshold, hold_ms) -> estimate, tripped

A sliding-window counter: the estimate is the previous window's count weighted by how much of it
still overlaps the last window_ms, plus the current window's count. Unlike a fixed window, a burst
straddling a window edge cannot pass ~2x the threshold before tripping. An estimate over the
threshold (re)arms the hold marker for hold_ms: the trip lasts until hold_ms after the last overage.
The rate hash holds w (window index), c (its count) and p (the previous window's count).
]]
local function evaluate_trip(rate_key, tripped_key, now_ms, window_ms, threshold, hold_ms)
  local window = math.floor(now_ms / window_ms)
  local state = redis.call('HMGET', rate_key, 'w', 'c', 'p')
  local w, c, p = tonumber(state[1]), tonumber(state[2]) or 0, tonumber(state[3]) or 0
  if w == window then
    c = redis.call('HINCRBY', rate_key, 'c', 1)
  else
    -- A new window: the hash lives two windows from now, long enough to carry this one's count
    -- as the next one's `p` (within a window, one HINCRBY does).
    if w == window - 1 then
      p, c = c, 1
    else
      p, c = 0, 1
    end
    redis.call('HSET', rate_key, 'w', window, 'c', c, 'p', p)
    redis.call('PEXPIRE', rate_key, window_ms * 2)
  end
  local elapsed = now_ms - window * window_ms
  local estimate = p * (window_ms - elapsed) / window_ms + c
  if estimate > threshold then
    redis.call('SET', tripped_key, '1', 'PX', hold_ms)
    return math.floor(estimate), 1
  end
  return math.floor(estimate), redis.call('EXISTS', tripped_key)
end
