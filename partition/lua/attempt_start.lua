-- attempt_start: (re)start an invocation: a due scheduled invocation, a retry after back-off,
-- a woken suspended one, or a resume after the partition changed owner.
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=lock KEYS[4]=inbox KEYS[5]=state KEYS[6]=journal
-- KEYS[7]=timers KEYS[8]=active
-- ARGV[1]=fence token ARGV[2]=now_ms ARGV[3]=timer member that fired ('' if none)
-- returns {'FENCED'} | {'GONE'} | {'WAIT', status} | {'INBOXED'}
--       | {'INVOKED', {hash}, {state}, {journal entries}}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'FENCED'}
end
if ARGV[3] ~= '' then
  redis.call('ZREM', KEYS[7], ARGV[3])
end
local st = redis.call('HGET', KEYS[2], 'st')
if not st then
  return {'GONE'}
end
if st ~= 'invoked' and st ~= 'scheduled' and st ~= 'backing-off' then
  return {'WAIT', st}
end
local id = string.sub(KEYS[2], #KEYS[2] - 37)
if st == 'scheduled' and redis.call('HGET', KEYS[2], 'kind') == 'exclusive' then
  local holder = redis.call('GET', KEYS[3])
  if holder and holder ~= id then
    redis.call('RPUSH', KEYS[4], id)
    redis.call('HSET', KEYS[2], 'st', 'inboxed', 'mt', ARGV[2])
    return {'INBOXED'}
  end
  redis.call('SET', KEYS[3], id)
end
redis.call('HSET', KEYS[2], 'st', 'invoked', 'mt', ARGV[2])
redis.call('SADD', KEYS[8], id)
local state = {}
if redis.call('HGET', KEYS[2], 'kind') ~= 'service' then
  state = redis.call('HGETALL', KEYS[5])
end
return {'INVOKED', redis.call('HGETALL', KEYS[2]), state, redis.call('LRANGE', KEYS[6], 0, -1)}
