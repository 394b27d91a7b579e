--[[ trip: count one trigger against a rate and say whether the trip holds (shadow mode and the
global gate use this alone; enrolled triggers use gate_accept).

KEYS: 1 rate, 2 tripped, 3 minute (counters; only written when ARGV 5 is '1')
ARGV: 1 now_ms, 2 window_ms, 3 threshold, 4 hold_ms, 5 count the decision ('1' in shadow mode)
returns: {estimate, tripped (0|1)}
]]
local estimate, tripped = evaluate_trip(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
if ARGV[5] == '1' then
  count(KEYS[3], tripped == 1 and 'shadow' or 'pass_through', 1)
end
return {estimate, tripped}
