--[[ read: several entries in one reply (a pipeline of separate reads costs a reply parse each).

The fields asked for come back as values only, in the order asked (HMGET): the reader knows the
names, and a reply without them is half the objects for the client to build.

The stored row is read only for a snapshot that keeps its payload there (its first byte is
codec.PAYLOAD_IN_ROW, 2).

KEYS: triples of entry hash, snapshot string, row string (one organisation's: one slot)
ARGV: the entry's field names to read (mollifier/codec.py ENTRY_FIELDS)
returns: per triple {{value or nil, ... (one per field)}, snapshot or false, row or false}, in KEYS
         order (every value nil for an entry that is gone)
]]
local out = {}
for i = 1, #KEYS, 3 do
  local snapshot = redis.call('GET', KEYS[i + 1])
  local row = false
  if snapshot and string.byte(snapshot, 1) == 2 then
    row = redis.call('GET', KEYS[i + 2])
  end
  out[#out + 1] = {redis.call('HMGET', KEYS[i], unpack(ARGV)), snapshot, row}
end
return out
