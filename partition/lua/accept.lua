-- accept: create an invocation, or report the existing one with the same (deterministic) id.
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=active KEYS[4]=lock KEYS[5]=inbox KEYS[6]=state KEYS[7]=timers
-- KEYS[8]=outbox
-- ARGV[1]=fence token ARGV[2]=now_ms ARGV[3]=kind (service|exclusive|shared|workflow)
-- ARGV[4]=execution time ms ('' = now) ARGV[5]=calling parent 'id|partition|cid,' ('' = none)
-- ARGV[6..]=field,value pairs of the new invocation hash
-- A duplicate called by a parent answers that parent too: at once through the outbox when
-- completed, else by joining the invocation's waiting parents (`pars`).
-- returns {'FENCED'} | {'DUP', status, rc, rm, rv, exp, exec, parents notified, request nonce}
--       | {'SCHEDULED'}
--       | {'INBOXED'} | {'INVOKED', {state field,value ...}}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'FENCED'}
end
local existing = redis.call('HMGET', KEYS[2], 'st', 'rc', 'rm', 'rv', 'exp', 'exec', 'pars', 'rq')
if existing[1] then
  local notified = 0
  if ARGV[5] ~= '' then
    if existing[1] == 'completed' then
      notified = notify_parents(KEYS[8], ARGV[5], existing[2] or '0', existing[3] or '', existing[4] or '')
    elseif not string.find(existing[7] or '', ARGV[5], 1, true) then
      redis.call('HSET', KEYS[2], 'pars', (existing[7] or '') .. ARGV[5])
    end
  end
  return {'DUP', existing[1], existing[2] or '', existing[3] or '', existing[4] or '', existing[5] or '',
          existing[6] or '', notified, existing[8] or ''}
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], 'pars', ARGV[5])
end
local fields = {}
for i = 6, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[2], unpack(fields))
local id = string.sub(KEYS[2], #KEYS[2] - 37)
if ARGV[4] ~= '' and tonumber(ARGV[4]) > tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], 'st', 'scheduled', 'exec', ARGV[4])
  redis.call('ZADD', KEYS[7], ARGV[4], 's|' .. id)
  return {'SCHEDULED'}
end
local kind = ARGV[3]
if kind == 'exclusive' then
  local holder = redis.call('GET', KEYS[4])
  if holder then
    redis.call('RPUSH', KEYS[5], id)
    redis.call('HSET', KEYS[2], 'st', 'inboxed')
    return {'INBOXED'}
  end
  redis.call('SET', KEYS[4], id)
end
redis.call('HSET', KEYS[2], 'st', 'invoked')
redis.call('SADD', KEYS[3], id)
if kind == 'service' then
  return {'INVOKED', {}}
end
return {'INVOKED', redis.call('HGETALL', KEYS[6])}
