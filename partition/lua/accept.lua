-- accept: create an invocation, or report the existing one with the same (deterministic) id.
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=active KEYS[4]=lock KEYS[5]=inbox KEYS[6]=state
-- ARGV[1]=fence token ARGV[2]=now_ms ARGV[3]=kind (service|exclusive|shared|workflow)
-- ARGV[4]=execution time ms ('' = now) ARGV[5..]=field,value pairs of the new invocation hash
-- returns {'FENCED'} | {'DUP', status, rc, rm, rv, exp, exec} | {'SCHEDULED'} | {'INBOXED'}
--       | {'INVOKED', {state field,value ...}}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'FENCED'}
end
local existing = redis.call('HMGET', KEYS[2], 'st', 'rc', 'rm', 'rv', 'exp', 'exec')
if existing[1] then
  return {'DUP', existing[1], existing[2] or '', existing[3] or '', existing[4] or '', existing[5] or '',
          existing[6] or ''}
end
local fields = {}
for i = 5, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[2], unpack(fields))
local kind = ARGV[3]
local now = ARGV[2]
if ARGV[4] ~= '' and tonumber(ARGV[4]) > tonumber(now) then
  -- delayed: the timer that fires it comes with the durable-execution work; until then the
  -- invocation is kept in the active set with its execution time and started when due.
  redis.call('HSET', KEYS[2], 'st', 'scheduled', 'exec', ARGV[4])
  redis.call('SADD', KEYS[3], string.sub(KEYS[2], #KEYS[2] - 37))
  return {'SCHEDULED'}
end
local id = string.sub(KEYS[2], #KEYS[2] - 37)
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
