--[[ read: several entries in one reply (a pipeline of separate reads costs a reply parse each).

KEYS: pairs of entry hash, snapshot string (one organisation's: one slot)
ARGV: none
returns: per pair {hash field/value list, snapshot or false}, in KEYS order (an empty list for an
         entry that is gone)
]]
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = {redis.call('HGETALL', KEYS[i]), redis.call('GET', KEYS[i + 1])}
end
return out
