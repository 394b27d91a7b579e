--[[ Library: count(minute_key, field, by) adds to the organisation's per-minute counters (the
dashboard's charts). The key lives two hours. ]]
local function count(minute_key, field, by)
  redis.call('HINCRBY', minute_key, field, by)
  redis.call('PEXPIRE', minute_key, 7200000)
end
