-- attempt_start: (re)start an invocation that is active on this partition: a retry after
-- back-off, a due scheduled invocation, or a resume after the partition changed owner.
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=lock KEYS[4]=inbox KEYS[5]=state
-- ARGV[1]=fence token ARGV[2]=now_ms
-- returns {'FENCED'} | {'GONE'} | {'WAIT', status} | {'INVOKED', {hash}, {state}} | {'INBOXED'}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'FENCED'}
end
local st = redis.call('HGET', KEYS[2], 'st')
if not st then
  return {'GONE'}
end
if st == 'completed' or st == 'inboxed' or st == 'paused' then
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
return {'INVOKED', redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[5])}
