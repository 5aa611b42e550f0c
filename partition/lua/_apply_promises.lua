-- apply and append, part: workflow promises. KEYS[10] = promises (name -> encoded result field),
-- KEYS[11] = promise waiters (name -> 'id|completion id,' list). Waiters other than this
-- invocation are reached through ARGV[6] / ARGV[7] (invocation hash / journal prefixes: the
-- same workflow key, so the same hash tag).

op_handlers[OP_GET_PROMISE] = function(run, i)
  local name, cid = ARGV[i + 1], ARGV[i + 2]
  local stored = redis.call('HGET', KEYS[10], name)
  if stored then
    own_note(run, COMPLETION_KEY .. cid, completion_frame(MT_GET_PROMISE_COMPLETION, cid, stored))
  else
    local waiting = redis.call('HGET', KEYS[11], name) or ''
    redis.call('HSET', KEYS[11], name, waiting .. run.id .. '|' .. cid .. ',')
  end
end

op_handlers[OP_PEEK_PROMISE] = function(run, i)
  local cid = ARGV[i + 2]
  local stored = redis.call('HGET', KEYS[10], ARGV[i + 1]) or PB_VOID
  own_note(run, COMPLETION_KEY .. cid, completion_frame(MT_PEEK_PROMISE_COMPLETION, cid, stored))
end

-- Give a resolved promise's result to one waiter: this invocation, or another invocation of the
-- same workflow, woken if it is suspended on it. A waiter that completed meanwhile is skipped.
local function resolve_waiter(run, wid, wcid, result)
  local key = COMPLETION_KEY .. wcid
  local frame = completion_frame(MT_GET_PROMISE_COMPLETION, wcid, result)
  if wid == run.id then
    own_note(run, key, frame)
    return
  end
  local wkey = ARGV[6] .. wid
  local wst = redis.call('HGET', wkey, F_STATUS)
  if not wst or wst == ST_COMPLETED then
    return
  end
  if append_note(wkey, ARGV[7] .. wid, key, frame) and wake_if_awaited(wkey, KEYS[3], wid, key, wst) then
    run.woken[#run.woken + 1] = wid
  end
end

op_handlers[OP_COMPLETE_PROMISE] = function(run, i)
  local name, cid, result = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = COMPLETION_KEY .. cid
  if redis.call('HEXISTS', KEYS[10], name) == 1 then
    own_note(run, key, completion_frame(MT_COMPLETE_PROMISE_COMPLETION, cid, PROMISE_ALREADY_COMPLETED))
    return
  end
  redis.call('HSET', KEYS[10], name, result)
  own_note(run, key, completion_frame(MT_COMPLETE_PROMISE_COMPLETION, cid, PB_VOID))
  local waiters = redis.call('HGET', KEYS[11], name)
  redis.call('HDEL', KEYS[11], name)
  for wid, wcid in string.gmatch(waiters or '', '([^|,]+)|(%d+),') do
    resolve_waiter(run, wid, wcid, result)
  end
end

-- A shared handler wrote this workflow key's promises (a value, or itself as a waiter). A live
-- run keeps them (its accept cleared any expiry; its END sets one). Without a run they would
-- never go: they expire with the run's retained result when it completed, else `default_ms` from
-- now. An expiry already set is kept.
op_handlers[OP_PROMISE_EXPIRY] = function(run, i)
  local rst = redis.call('HMGET', ARGV[6] .. ARGV[i + 1], F_STATUS, F_EXPIRES)
  if rst[1] and rst[1] ~= ST_COMPLETED then
    return
  end
  for _, k in ipairs({KEYS[10], KEYS[11]}) do
    if redis.call('PTTL', k) == -1 then
      if rst[1] and rst[2] then
        redis.call('PEXPIREAT', k, rst[2])
      else
        redis.call('PEXPIRE', k, ARGV[i + 2])
      end
    end
  end
end
