--[[ accept: put an entry into the buffer unconditionally (no gate), deduplicating by run id and by
idempotency key, bounded by the organisation's cap.

KEYS: 1 entry, 2 ready, 3 listing, 4 envs, 5 stats, 6 idem, 7 claim, 8 batch
ARGV: 1 now_ms, 2 run, 3 env, 4 cap, 5 idem_key, 6 batch_index, 7 claim_marker, 8 claim_ttl,
      9.. entry field/value pairs
returns: the accept reply (lib/accept.lua)
]]
local fields = {}
for i = 9, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
return accept_entry(
  {entry = KEYS[1], ready = KEYS[2], listing = KEYS[3], envs = KEYS[4], stats = KEYS[5], idem = KEYS[6], claim = KEYS[7], batch = KEYS[8]},
  {run = ARGV[2], env = ARGV[3], now_ms = tonumber(ARGV[1]), cap = tonumber(ARGV[4]), idem_key = ARGV[5],
   batch_index = ARGV[6], claim_marker = ARGV[7], claim_ttl = tonumber(ARGV[8]), fields = fields}
)
