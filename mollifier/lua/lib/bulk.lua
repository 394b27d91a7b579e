--[[ Library: bulk(command, key, items) runs one command over many members (or score/member pairs)
in as few calls as Lua allows: unpack is bounded by Lua's C stack, so 1,000 values a call. A call
costs about as much as the work it does inside a script: one call for a round's runs instead of one
per run is most of what a drain round costs Redis. ]]
local function bulk(command, key, items)
  for i = 1, #items, 1000 do
    redis.call(command, key, unpack(items, i, math.min(i + 999, #items)))
  end
end
