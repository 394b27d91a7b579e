--[[ Library: the stored row (keys.row; prepended to the scripts that change a buffered run).

mark_row_stale(key): the run changed, so its stored row is no longer the row to write. Its first
byte becomes codec.ROW_STALE ("!", over the "[" of its envelope): the drain then builds the row from
the entry. The row stays, as readers take the payload from it (codec.PAYLOAD_IN_ROW). SETRANGE
changes one byte in place; a run without a stored row is left without one.
]]
local function mark_row_stale(key)
  if redis.call('EXISTS', key) == 1 then
    redis.call('SETRANGE', key, 0, '!')
  end
end
