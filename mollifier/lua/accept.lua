--[[ accept: put an entry into the buffer unconditionally (no gate), deduplicating by run id and by
idempotency key, bounded by the organisation's caps (runs and bytes) and refused while Redis is near
its maxmemory.

KEYS: 1 entry, 2 snapshot, 3 ready, 4 listing, 5 envs, 6 stats, 7 idem, 8 claim, 9 batch, 10 row, 11 keyed
ARGV: 1 now_ms, 2 run, 3 env, 4 cap, 5 max_bytes, 6 memory_full, 7 idem_key, 8 batch_index,
      9 claim_marker, 10 claim_ttl, 11 snapshot, 12 row ('' for none), 13 marker_gen ('' for none),
      14.. entry field/value pairs
returns: the accept reply (lib/accept.lua)
]]
local fields = {}
for i = 14, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
return accept_entry(
  {entry = KEYS[1], snapshot = KEYS[2], ready = KEYS[3], listing = KEYS[4], envs = KEYS[5], stats = KEYS[6], idem = KEYS[7], claim = KEYS[8], batch = KEYS[9], row = KEYS[10], keyed = KEYS[11]},
  {run = ARGV[2], env = ARGV[3], now_ms = tonumber(ARGV[1]), cap = tonumber(ARGV[4]), max_bytes = tonumber(ARGV[5]),
   memory_full = ARGV[6], idem_key = ARGV[7], batch_index = ARGV[8], claim_marker = ARGV[9],
   claim_ttl = tonumber(ARGV[10]), snapshot = ARGV[11], row = ARGV[12], marker_gen = ARGV[13], fields = fields}
)
