-- notify: append a notification (completion or signal) to an invocation's journal, once per
-- key, and wake the invocation if it is suspended waiting for it.
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=journal KEYS[4]=timers KEYS[5]=active
-- ARGV[1]=fence token ARGV[2]=now_ms ARGV[3]=notification key (c<id>|s<idx>|n<name>)
-- ARGV[4]=framed notification ARGV[5]=timer member to remove ('' if none)
-- returns {'FENCED'} | {'GONE'} | {'DUP'} | {'APPLIED', 0} | {'APPLIED', 1, {service, key}} (woken)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'FENCED'}
end
if ARGV[5] ~= '' then
  redis.call('ZREM', KEYS[4], ARGV[5])
end
local st = redis.call('HGET', KEYS[2], 'st')
if not st or st == 'completed' then
  return {'GONE'}
end
local nkey = 'n:' .. ARGV[3]
if redis.call('HEXISTS', KEYS[2], nkey) == 1 then
  return {'DUP'}
end
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('HSET', KEYS[2], nkey, '1')
if st == 'suspended' then
  local wait = redis.call('HGET', KEYS[2], 'wait') or ''
  if string.find(wait, ' ' .. ARGV[3] .. ' ', 1, true) then
    redis.call('HSET', KEYS[2], 'st', 'invoked', 'mt', ARGV[2])
    redis.call('HDEL', KEYS[2], 'wait')
    redis.call('SADD', KEYS[5], string.sub(KEYS[2], #KEYS[2] - 37))
    return {'APPLIED', 1, redis.call('HMGET', KEYS[2], 'svc', 'key')}
  end
end
return {'APPLIED', 0}
