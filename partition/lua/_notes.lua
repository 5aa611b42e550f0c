-- _notes: appending notifications (completions, signals) to a journal and waking the invocation.

-- Append `frame` to a journal once per notification key; false when the key is there already.
local function append_note(inv_key, journal_key, key, frame)
  local field = NOTE_PREFIX .. key
  if redis.call('HEXISTS', inv_key, field) == 1 then
    return false
  end
  redis.call('RPUSH', journal_key, frame)
  redis.call('HSET', inv_key, field, '1')
  return true
end

-- Wake invocation `id` (status `st`) if it is suspended awaiting `key`: invoked again and
-- listed in `active`. Returns true when it woke.
local function wake_if_awaited(inv_key, active_key, id, key, st)
  if st ~= ST_SUSPENDED then
    return false
  end
  local wait = redis.call('HGET', inv_key, F_WAITING) or ''
  if not string.find(wait, ' ' .. key .. ' ', 1, true) then
    return false
  end
  redis.call('HSET', inv_key, F_STATUS, ST_INVOKED)
  redis.call('HDEL', inv_key, F_WAITING)
  redis.call('SADD', active_key, id)
  return true
end
