--[[ gate_accept: evaluate the environment's trip and, when it is tripped, accept the trigger into
the buffer in the same step (one round trip for a mollified trigger).

KEYS: 1 rate, 2 tripped, 3 entry, 4 ready, 5 listing, 6 envs, 7 stats, 8 idem, 9 claim, 10 batch
ARGV: 1 now_ms, 2 window_ms, 3 threshold, 4 hold_ms, 5 force ('1': a global trip holds),
      6 run, 7 env, 8 cap, 9 idem_key ('' for none), 10 batch_index ('' for none),
      11 claim_marker ('' or 'pending:<token>'), 12 claim_ttl, 13.. entry field/value pairs
returns: {'pass_through', estimate} when not tripped, else the accept reply (lib/accept.lua)
]]
local now_ms = tonumber(ARGV[1])
local estimate, tripped = evaluate_trip(KEYS[1], KEYS[2], now_ms, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
if tripped == 0 and ARGV[5] ~= '1' then
  return {'pass_through', tostring(estimate)}
end
local fields = {}
for i = 13, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
return accept_entry(
  {entry = KEYS[3], ready = KEYS[4], listing = KEYS[5], envs = KEYS[6], stats = KEYS[7], idem = KEYS[8], claim = KEYS[9], batch = KEYS[10]},
  {run = ARGV[6], env = ARGV[7], now_ms = now_ms, cap = tonumber(ARGV[8]), idem_key = ARGV[9],
   batch_index = ARGV[10], claim_marker = ARGV[11], claim_ttl = tonumber(ARGV[12]), fields = fields}
)
