-- _prelude: helpers every composed transition gets, right after the constants scripts.py
-- generates from the Python definitions (ST_*, F_*, KIND_*, OP_*, reply codes, MT_* message
-- types, NOTE_PREFIX, PB_VOID ...). In every transition KEYS[1] is the partition's lease and
-- ARGV[1] the caller's fence token.

-- True when the caller no longer holds the lease: a transition then writes nothing.
local function fenced()
  return redis.call('GET', KEYS[1]) ~= ARGV[1]
end

local function pb_varint(n)
  n = tonumber(n)
  local s = ''
  while n >= 128 do
    s = s .. string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  return s .. string.char(n)
end

-- A framed notification {1: completion_id, result}. `result_field` is a NotificationTemplate
-- result field encoded by Python (invocation.Result.encode, PB_VOID): Lua only adds the
-- completion id (tag 1, varint) and the frame header.
local function completion_frame(msg_type, cid, result_field)
  local payload = '\8' .. pb_varint(cid) .. result_field
  return struct.pack('>HHI4', msg_type, 0, #payload) .. payload
end

-- An outbox entry appending `frame` (dedup key `key`) to invocation `inv` on partition `p`
-- (the layout of outbox_codec.encode_outbox_notify).
local function outbox_notify(p, inv, key, frame)
  return OUTBOX_NOTIFY .. '\0' .. p .. '\0' .. inv .. '\0' .. key .. '\0' .. frame
end
