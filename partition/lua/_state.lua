-- _state: what the state edit (`state_edit.lua`) and the key lock's hand-over (`_apply_end.lua`)
-- share: the digest of an object's state and the encoded state an edit carries. Both are built
-- from pairs as u32 length + field + u32 length + value (scripts.encode_state); the digest is
-- the SHA-1 hex of the pairs sorted by field bytes (scripts.state_digest computes the same).

-- Whether string `a` sorts before `b` byte by byte (Lua's `<` follows the server's locale).
local function bytes_before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

-- The digest of the state hash `state_key` as it is now.
local function state_digest(state_key)
  local flat = redis.call('HGETALL', state_key)
  local order = {}
  for i = 1, #flat, 2 do
    order[#order + 1] = i
  end
  table.sort(order, function(x, y) return bytes_before(flat[x], flat[y]) end)
  local parts = {}
  for _, i in ipairs(order) do
    parts[#parts + 1] = struct.pack('>I4', #flat[i]) .. flat[i] .. struct.pack('>I4', #flat[i + 1]) .. flat[i + 1]
  end
  return redis.sha1hex(table.concat(parts))
end

-- Replace the whole state hash `state_key` with the encoded pairs `encoded` ('' clears it).
local function replace_state(state_key, encoded)
  local ttl_ms = redis.call('PTTL', state_key)  -- a completed workflow's state keeps its expiry
  redis.call('DEL', state_key)
  local pos, batch = 1, {}
  while pos <= #encoded do
    local n, at = struct.unpack('>I4', encoded, pos)
    local field = string.sub(encoded, at, at + n - 1)
    local m, vat = struct.unpack('>I4', encoded, at + n)
    batch[#batch + 1] = field
    batch[#batch + 1] = string.sub(encoded, vat, vat + m - 1)
    pos = vat + m
    if #batch >= 1000 then
      redis.call('HSET', state_key, unpack(batch))
      batch = {}
    end
  end
  if #batch > 0 then
    redis.call('HSET', state_key, unpack(batch))
  end
  if ttl_ms > 0 and redis.call('EXISTS', state_key) == 1 then
    redis.call('PEXPIRE', state_key, ttl_ms)
  end
end

-- An inbox entry holding a state edit queued behind the key's lock: the tag, the digest the
-- state must still have ('' = any), a separator, the encoded state.
local function queued_edit(digest, encoded)
  return STATE_EDIT_TAG .. digest .. STATE_EDIT_SEP .. encoded
end

-- If inbox entry `entry` is a queued state edit, apply it to `state_key` when the state still has
-- its digest (else drop it, as Restate drops a stale edit) and return true; false otherwise.
local function apply_queued_edit(state_key, entry)
  if string.sub(entry, 1, #STATE_EDIT_TAG) ~= STATE_EDIT_TAG then
    return false
  end
  local sep = string.find(entry, STATE_EDIT_SEP, #STATE_EDIT_TAG + 1, true)
  local digest = string.sub(entry, #STATE_EDIT_TAG + 1, sep - 1)
  if digest == '' or digest == state_digest(state_key) then
    replace_state(state_key, string.sub(entry, sep + 1))
  end
  return true
end
