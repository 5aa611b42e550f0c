-- apply: store the outcome of one attempt atomically: the journal entries it produced, their
-- effects (state, timers, outbox, workflow promises) and its terminal message.
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=active KEYS[4]=lock KEYS[5]=inbox KEYS[6]=state
-- KEYS[7]=journal KEYS[8]=timers KEYS[9]=outbox KEYS[10]=promises KEYS[11]=promise waiters
-- ARGV[1]=fence token ARGV[2]=now_ms ARGV[3]=journal length the attempt replayed
-- ARGV[4]=terminal END | SUSPEND | ERROR
--   END:     ARGV[5]=rc ARGV[6]=rm ARGV[7]=rv
--   SUSPEND: ARGV[5]=awaited notification keys as ' c1 s1 nname '
--   ERROR:   ARGV[5]=next status (backing-off|paused) ARGV[6]=retry at ms ARGV[7]=message
-- ARGV[8]=failed attempts since the journal last grew (after this attempt)
-- ARGV[9]=invocation hash prefix ARGV[10]=journal prefix (same hash tag: promise waiters)
-- ARGV[11..]=ops (below). At END the result is also queued for every waiting parent (`pars`).
-- ops:  J frame | N key frame | S key value | C key | A | T due_ms member
--                  | O message | PG name cid | PP name cid | PC name cid result already_failure
-- returns {'FENCED'} | {'BAD_STATE', status}
--       | {'OK', exp, next_id, {next hash}, {next state}, {woken}, parents notified}   (END)
--       | {'RESUME', {entries from the replayed length on}, {woken}}    (SUSPEND, already satisfied)
--       | {'SUSPENDED', {woken}} | {'BACKOFF', {woken}}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'FENCED'}
end
local st = redis.call('HGET', KEYS[2], 'st')
if st ~= 'invoked' then
  return {'BAD_STATE', st or ''}
end
local id = string.sub(KEYS[2], #KEYS[2] - 37)
local now = ARGV[2]
local woken = {}

local grew = false

local function append_note(inv_key, journal_key, key, frame)
  if redis.call('HEXISTS', inv_key, 'n:' .. key) == 1 then
    return false
  end
  redis.call('RPUSH', journal_key, frame)
  redis.call('HSET', inv_key, 'n:' .. key, '1')
  if inv_key == KEYS[2] then
    grew = true
  end
  return true
end

local VOID = '\34\0'
local i = 11
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'J' then
    redis.call('RPUSH', KEYS[7], ARGV[i + 1])
    grew = true
    i = i + 2
  elseif op == 'N' then
    append_note(KEYS[2], KEYS[7], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'S' then
    redis.call('HSET', KEYS[6], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'C' then
    redis.call('HDEL', KEYS[6], ARGV[i + 1])
    i = i + 2
  elseif op == 'A' then
    redis.call('DEL', KEYS[6])
    i = i + 1
  elseif op == 'T' then
    redis.call('ZADD', KEYS[8], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'O' then
    redis.call('RPUSH', KEYS[9], ARGV[i + 1])
    i = i + 2
  elseif op == 'PG' then
    local stored = redis.call('HGET', KEYS[10], ARGV[i + 1])
    if stored then
      append_note(KEYS[2], KEYS[7], 'c' .. ARGV[i + 2], pb_completion(0x8009, ARGV[i + 2], stored))
    else
      redis.call('HSET', KEYS[11], ARGV[i + 1],
                 (redis.call('HGET', KEYS[11], ARGV[i + 1]) or '') .. id .. '|' .. ARGV[i + 2] .. ',')
    end
    i = i + 3
  elseif op == 'PP' then
    local stored = redis.call('HGET', KEYS[10], ARGV[i + 1]) or VOID
    append_note(KEYS[2], KEYS[7], 'c' .. ARGV[i + 2], pb_completion(0x800A, ARGV[i + 2], stored))
    i = i + 3
  elseif op == 'PC' then
    local name, cid, result = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    if redis.call('HEXISTS', KEYS[10], name) == 1 then
      append_note(KEYS[2], KEYS[7], 'c' .. cid, pb_completion(0x800B, cid, ARGV[i + 4]))
    else
      redis.call('HSET', KEYS[10], name, result)
      append_note(KEYS[2], KEYS[7], 'c' .. cid, pb_completion(0x800B, cid, VOID))
      local waiters = redis.call('HGET', KEYS[11], name)
      redis.call('HDEL', KEYS[11], name)
      for wid, wcid in string.gmatch(waiters or '', '([^|,]+)|(%d+),') do
        local wkey = ARGV[9] .. wid
        if wid == id then
          append_note(KEYS[2], KEYS[7], 'c' .. wcid, pb_completion(0x8009, wcid, result))
        elseif (redis.call('HGET', wkey, 'st') or 'completed') ~= 'completed' then
          if append_note(wkey, ARGV[10] .. wid, 'c' .. wcid, pb_completion(0x8009, wcid, result)) then
            local wst = redis.call('HGET', wkey, 'st')
            local wait = redis.call('HGET', wkey, 'wait') or ''
            if wst == 'suspended' and string.find(wait, ' c' .. wcid .. ' ', 1, true) then
              redis.call('HSET', wkey, 'st', 'invoked', 'mt', now)
              redis.call('HDEL', wkey, 'wait')
              redis.call('SADD', KEYS[3], wid)
              woken[#woken + 1] = wid
            end
          end
        end
      end
    end
    i = i + 5
  else
    return redis.error_reply('apply: unknown op ' .. tostring(op))
  end
end

local terminal = ARGV[4]
redis.call('HSET', KEYS[2], 'att', ARGV[8], 'mt', now)
if grew then
  redis.call('HSET', KEYS[2], 'lg', now)  -- when the journal last grew (duration_since_last_stored_entry)
end
if terminal == 'SUSPEND' then
  for key in string.gmatch(ARGV[5], '%S+') do
    if redis.call('HEXISTS', KEYS[2], 'n:' .. key) == 1 then
      return {'RESUME', redis.call('LRANGE', KEYS[7], tonumber(ARGV[3]), -1), woken}
    end
  end
  redis.call('HSET', KEYS[2], 'st', 'suspended', 'wait', ARGV[5])
  redis.call('SREM', KEYS[3], id)
  return {'SUSPENDED', woken}
end
if terminal == 'ERROR' then
  redis.call('HSET', KEYS[2], 'st', ARGV[5], 'rt', ARGV[6], 'lerr', ARGV[7])
  redis.call('SREM', KEYS[3], id)
  if ARGV[5] == 'backing-off' then
    redis.call('ZADD', KEYS[8], ARGV[6], 'r|' .. id)
  end
  return {'BACKOFF', woken}
end

-- END: publish the result, release the key lock, hand it to the inbox head.
local cret = tonumber(redis.call('HGET', KEYS[2], 'cret') or '0')
local kind = redis.call('HGET', KEYS[2], 'kind')
local notified = notify_parents(KEYS[9], redis.call('HGET', KEYS[2], 'pars'), ARGV[5], ARGV[6], ARGV[7])
local exp = ''
redis.call('DEL', KEYS[7])
if cret > 0 then
  exp = tostring(tonumber(now) + cret)
  local notes = {}
  for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do
    if string.sub(f, 1, 2) == 'n:' then
      notes[#notes + 1] = f
    end
  end
  notes[#notes + 1] = 'in'
  redis.call('HDEL', KEYS[2], unpack(notes))
  redis.call('HSET', KEYS[2], 'st', 'completed', 'rc', ARGV[5], 'rm', ARGV[6], 'rv', ARGV[7], 'exp', exp)
  redis.call('PEXPIRE', KEYS[2], cret)
  if kind == 'workflow' then
    redis.call('PEXPIRE', KEYS[6], cret)
    redis.call('PEXPIRE', KEYS[10], cret)
    redis.call('PEXPIRE', KEYS[11], cret)
  end
else
  redis.call('DEL', KEYS[2])
end
redis.call('SREM', KEYS[3], id)
if redis.call('GET', KEYS[4]) ~= id then
  return {'OK', exp, '', {}, {}, woken, notified}
end
while true do
  local nxt = redis.call('LPOP', KEYS[5])
  if not nxt then
    redis.call('DEL', KEYS[4])
    return {'OK', exp, '', {}, {}, woken, notified}
  end
  local nkey = ARGV[9] .. nxt
  if redis.call('HGET', nkey, 'st') == 'inboxed' then
    redis.call('SET', KEYS[4], nxt)
    redis.call('HSET', nkey, 'st', 'invoked', 'mt', now)
    redis.call('SADD', KEYS[3], nxt)
    return {'OK', exp, nxt, redis.call('HGETALL', nkey), redis.call('HGETALL', KEYS[6]), woken, notified}
  end
end
