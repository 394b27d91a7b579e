--[[ Library: count(minute_key, field, by) adds to the organisation's per-minute counters (the
dashboard's charts). The key lives two hours: its expiry is set when a field starts (a new key
starts every field it has), not on every count. ]]
local function count(minute_key, field, by)
  if redis.call('HINCRBY', minute_key, field, by) == by then
    redis.call('PEXPIRE', minute_key, 7200000)
  end
end
