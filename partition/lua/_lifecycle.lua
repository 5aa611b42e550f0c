-- _lifecycle: what the lifecycle commands (kill, cancel, pause, resume) share. Every command
-- reads the status first and answers {MANAGE_NOT_FOUND, ''} or {<code>, status} without writing
-- when it does not apply.

-- The status of the invocation whose hash is `inv_key` ('' when it does not exist).
local function status_of(inv_key)
  return redis.call('HGET', inv_key, F_STATUS) or ''
end

-- The head every command shares: the status of invocation KEYS[2], and the reply to give at once
-- when the fence (KEYS[1], ARGV[1]) refuses the write or the invocation does not exist or is
-- completed (nil when the command goes on).
local function lifecycle_head()
  if fenced() then
    return '', {MANAGE_FENCED}
  end
  local st = status_of(KEYS[2])
  if st == '' then
    return st, {MANAGE_NOT_FOUND, st}
  end
  if st == ST_COMPLETED then
    return st, {MANAGE_COMPLETED, st}
  end
  return st, nil
end

-- Forget the pending starts of invocation `id`: its start and retry timer members and its place in
-- its key's inbox (`inbox_key`). Sleep members stay: a fired one finds the invocation gone or
-- completed and is consumed (notify.lua), so none is left due.
local function unqueue(timers_key, inbox_key, id)
  redis.call('ZREM', timers_key, TIMER_START .. id, TIMER_RETRY .. id)
  redis.call('LREM', inbox_key, 0, id)
end

-- Make invocation `id` invoked again (listed in `active`, awaited keys cleared); with
-- `reset_attempts` the retry policy starts from scratch.
local function reinvoke(inv_key, active_key, id, reset_attempts)
  redis.call('HSET', inv_key, F_STATUS, ST_INVOKED)
  redis.call('HDEL', inv_key, F_WAITING)
  if reset_attempts then
    redis.call('HSET', inv_key, F_ATTEMPTS, 0)
  end
  redis.call('SADD', active_key, id)
end
