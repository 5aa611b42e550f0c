-- attempt_failed: record a failed attempt; the invocation backs off (or pauses when its retry
-- policy is exhausted). It stays in the active set, so a new owner resumes it.
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=active
-- ARGV[1]=fence token ARGV[2]=now_ms ARGV[3]=next status ('backing-off'|'paused')
-- ARGV[4]=next retry at ms ARGV[5]=last failure message
-- returns {'FENCED'} | {'BAD_STATE', status} | {'OK', attempts}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'FENCED'}
end
local st = redis.call('HGET', KEYS[2], 'st')
if st ~= 'invoked' then
  return {'BAD_STATE', st or ''}
end
local n = redis.call('HINCRBY', KEYS[2], 'att', 1)
redis.call('HSET', KEYS[2], 'st', ARGV[3], 'rt', ARGV[4], 'lerr', ARGV[5], 'mt', ARGV[2])
if ARGV[3] == 'paused' then
  redis.call('SREM', KEYS[3], string.sub(KEYS[2], #KEYS[2] - 37))
end
return {'OK', n}
