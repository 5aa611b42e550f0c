-- accept: create an invocation, or report the existing one with the same (deterministic) id.
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=active KEYS[4]=lock KEYS[5]=inbox KEYS[6]=state KEYS[7]=timers
-- KEYS[8]=outbox, and for a workflow run KEYS[9]=promises KEYS[10]=promise waiters
-- ARGV[1]=fence token ARGV[2]=invocation id ARGV[3]=handler kind (KIND_*)
-- ARGV[4]=start time ms, given only when it is in the future ('' = start now)
-- ARGV[5]=the calling parent 'id|partition|completion id,' ('' = none)
-- ARGV[6]=concurrency bucket ('' = unlimited) ARGV[7]=its admission (a limit, or
--         '<limit>|<ms per token>|<burst>|<queue|reject>': _scope.lua) ARGV[8]=limit key ('' = none)
-- ARGV[9]=now ms (the worker's clock; rate limits) ARGV[10]=1 when over the limit may be refused
-- ARGV[11..]=field, value pairs of the new invocation's hash (InvocationRecord.to_fields; its
--           status is decided here)
-- A scoped invocation over its bucket's limit is queued in its vqueue (INBOXED, _scope.lua); under
-- an `on_limit: reject` admission (and ARGV[10] = 1) it is refused instead and nothing is stored.
-- A duplicate called by a parent answers that parent too: at once through the outbox when
-- completed, else by joining the invocation's waiting parents.
-- returns {FENCED}
--       | {DUP, status, result field or '', expires ms or '', start ms or '', parents notified, request nonce}
--       | {SCHEDULED} | {INBOXED} | {INVOKED, {state field, value ...}}
--       | {REJECTED, ms until a retry may find room}
if fenced() then
  return {ACCEPT_FENCED}
end
local id, parent = ARGV[2], ARGV[5]
local existing = redis.call('HMGET', KEYS[2], F_STATUS, F_RESULT, F_EXPIRES, F_EXECUTION_TIME, F_PARENTS,
                            F_REQUEST_NONCE)
if existing[1] then
  local notified = 0
  if parent ~= '' then
    if existing[1] == ST_COMPLETED then
      notified = notify_parents(KEYS[8], parent, existing[2] or '')
    elseif not string.find(existing[5] or '', parent, 1, true) then
      redis.call('HSET', KEYS[2], F_PARENTS, (existing[5] or '') .. parent)
    end
  end
  return {ACCEPT_DUP, existing[1], existing[2] or '', existing[3] or '', existing[4] or '', notified,
          existing[6] or ''}
end
local took, token_at, reject = true, nil, false
if ARGV[6] ~= '' then
  if ARGV[4] ~= '' then
    vq_configure(KEYS[2], ARGV[6], ARGV[7])  -- a delayed one is admitted when it is due
  else
    took, token_at, reject = vq_take(KEYS[2], id, ARGV[6], ARGV[7], ARGV[9])
    if not took and reject and ARGV[10] == '1' then
      local now = tonumber(ARGV[9])
      return {ACCEPT_REJECTED, token_at and math.max(math.ceil(token_at - now), 1) or 1000}
    end
  end
end
redis.call('HSET', KEYS[2], unpack(ARGV, 11))
index_add(KEYS[2], id)
if ARGV[3] == KIND_WORKFLOW and KEYS[10] then
  -- Promises a shared handler wrote before this run expire without one (OP_PROMISE_EXPIRY):
  -- the run keeps them until its END sets their expiry.
  redis.call('PERSIST', KEYS[9])
  redis.call('PERSIST', KEYS[10])
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], F_STATUS, ST_SCHEDULED)
  redis.call('ZADD', KEYS[7], ARGV[4], TIMER_START .. id)
  return {ACCEPT_SCHEDULED}
end
local kind = ARGV[3]
if not took then
  vq_enqueue(KEYS[2], id, ARGV[6], ARGV[8])
  redis.call('HSET', KEYS[2], F_STATUS, ST_INBOXED)
  if token_at then
    vq_arm(KEYS[2], ARGV[6], KEYS[7], math.max(math.ceil(token_at), tonumber(ARGV[9])))
  end
  return {ACCEPT_INBOXED}
end
if kind == KIND_EXCLUSIVE then
  if redis.call('GET', KEYS[4]) then
    redis.call('RPUSH', KEYS[5], id)
    redis.call('HSET', KEYS[2], F_STATUS, ST_INBOXED)
    return {ACCEPT_INBOXED}
  end
  redis.call('SET', KEYS[4], id)
end
if ARGV[11] ~= F_STATUS or ARGV[12] ~= ST_INVOKED then  -- to_fields puts the status first
  redis.call('HSET', KEYS[2], F_STATUS, ST_INVOKED)
end
redis.call('SADD', KEYS[3], id)
if kind == KIND_SERVICE then
  return {ACCEPT_INVOKED, {}}
end
return {ACCEPT_INVOKED, redis.call('HGETALL', KEYS[6])}
