-- _prelude: helpers prepended to every script by scripts.py (not a transition of its own).
-- They build the few protobuf encodings a transition must produce itself: notification frames
-- and the outbox entries that carry them to another partition.

local function pb_varint(n)
  n = tonumber(n)
  local s = ''
  while n >= 128 do
    s = s .. string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  return s .. string.char(n)
end

-- The encoded `result` field of a notification: 5 = Value{content} on success, 6 = Failure.
local function pb_result(rc, rm, rv)
  if tonumber(rc) == 0 then
    local inner = ''
    if rv ~= '' then
      inner = '\10' .. pb_varint(#rv) .. rv
    end
    return '\42' .. pb_varint(#inner) .. inner
  end
  local inner = '\8' .. pb_varint(rc)
  if rm ~= '' then
    inner = inner .. '\18' .. pb_varint(#rm) .. rm
  end
  return '\50' .. pb_varint(#inner) .. inner
end

-- A framed notification {1: completion_id, result}.
local function pb_completion(msg_type, cid, result)
  local payload = '\8' .. pb_varint(cid) .. result
  return struct.pack('>HHI4', msg_type, 0, #payload) .. payload
end

-- An outbox entry that appends `frame` (dedup key `key`) to invocation `inv` on partition `p`.
local function outbox_notify(p, inv, key, frame)
  return 'N\0' .. p .. '\0' .. inv .. '\0' .. key .. '\0' .. frame
end

-- Queue the call result (rc, rm, rv) for every waiting parent in `pars` ("id|partition|cid,...").
local function notify_parents(outbox_key, pars, rc, rm, rv)
  local n = 0
  local result = nil
  for pid, pp, cid in string.gmatch(pars or '', '([^|,]+)|(%d+)|(%d+),') do
    result = result or pb_result(rc, rm, rv)
    redis.call('RPUSH', outbox_key, outbox_notify(pp, pid, 'c' .. cid, pb_completion(0x800D, cid, result)))
    n = n + 1
  end
  return n
end

