--[[ gate_accept: evaluate the environment's trip and, when it is tripped, accept the trigger into
the buffer in the same step (one round trip for a mollified trigger). The request's idempotency
key (the SDK's x-trigger-request-idempotency-key) is resolved here too: a retried request finds the
run its first attempt made, whichever store took it, and is not counted against the rate again.

KEYS: 1 rate, 2 tripped, 3 entry, 4 snapshot, 5 ready, 6 listing, 7 envs, 8 stats, 9 idem, 10 claim, 11 batch,
      12 row, 13 keyed, 14 minute (the organisation's counters for this minute), 15 request (or a placeholder)
ARGV: 1 now_ms, 2 window_ms, 3 threshold, 4 hold_ms, 5 force ('1': a global trip holds),
      6 run, 7 env, 8 cap, 9 max_bytes, 10 memory_full ('1': refuse new entries), 11 idem_key ('' for none),
      12 batch_index ('' for none), 13 claim_marker ('' or 'pending:<token>'), 14 claim_ttl, 15 snapshot,
      16 request ttl ms ('' when the request has no key), 17 replace ('1': the run the key named is
      gone: this request makes a new one), 18 row ('' for none), 19 marker_gen ('' for none),
      20.. entry field/value pairs
returns: {'duplicate_request', run} for a retried request; {'pass_through', estimate} when not
         tripped; else the accept reply (lib/accept.lua). A memory_full reply is counted as a
         pass-through: the trigger goes to Postgres. Whenever this run is written (buffered or to
         Postgres), the request key now names it. A needs_marker reply is neither counted nor
         remembered: the caller comes back with the marker (its trip is then counted twice, once
         per such episode of the environment).
]]
local now_ms = tonumber(ARGV[1])
local request_ttl = ARGV[16]
if request_ttl ~= '' and ARGV[17] ~= '1' then
  local known = redis.call('GET', KEYS[15])
  if known then
    return {'duplicate_request', known}
  end
end
local function remember_request()
  if request_ttl ~= '' then
    redis.call('SET', KEYS[15], ARGV[6], 'PX', tonumber(request_ttl))
  end
end
local estimate, tripped = evaluate_trip(KEYS[1], KEYS[2], now_ms, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
if tripped == 0 and ARGV[5] ~= '1' then
  count(KEYS[14], 'pass_through', 1)
  remember_request()
  return {'pass_through', tostring(estimate)}
end
local fields = {}
for i = 20, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local reply = accept_entry(
  {entry = KEYS[3], snapshot = KEYS[4], ready = KEYS[5], listing = KEYS[6], envs = KEYS[7], stats = KEYS[8], idem = KEYS[9], claim = KEYS[10], batch = KEYS[11], row = KEYS[12], keyed = KEYS[13]},
  {run = ARGV[6], env = ARGV[7], now_ms = now_ms, cap = tonumber(ARGV[8]), max_bytes = tonumber(ARGV[9]),
   memory_full = ARGV[10], idem_key = ARGV[11], batch_index = ARGV[12], claim_marker = ARGV[13],
   claim_ttl = tonumber(ARGV[14]), snapshot = ARGV[15], row = ARGV[18], marker_gen = ARGV[19], fields = fields}
)
if reply[1] == 'needs_marker' then
  return reply
end
local counted = 'mollify'
if reply[1] == 'over_cap' then
  counted = 'refused'
elseif reply[1] == 'memory_full' then
  counted = 'pass_through'
end
count(KEYS[14], counted, 1)
if reply[1] == 'accepted' or reply[1] == 'memory_full' then
  remember_request()
end
return reply
