--[[ read: several entries in one reply (a pipeline of separate reads costs a reply parse each).

The fields asked for come back as values only, in the order asked (HMGET): the reader knows the
names, and a reply without them is half the objects for the client to build.

KEYS: pairs of entry hash, snapshot string (one organisation's: one slot)
ARGV: the entry's field names to read (mollifier/codec.py ENTRY_FIELDS)
returns: per pair {{value or nil, ... (one per field)}, snapshot or false}, in KEYS order (every
         value nil for an entry that is gone)
]]
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = {redis.call('HMGET', KEYS[i], unpack(ARGV)), redis.call('GET', KEYS[i + 1])}
end
return out
