-- complete: store an invocation's result and state writes atomically, release its key lock
-- and hand the lock to the head of the inbox.
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=active KEYS[4]=lock KEYS[5]=inbox KEYS[6]=state
-- ARGV[1]=fence token ARGV[2]=now_ms ARGV[3]=rc (0 = success) ARGV[4]=rm ARGV[5]=rv
-- ARGV[6]=invocation hash prefix (same hash tag; used to reach the inbox head's hash)
-- ARGV[7..]=state ops: 'S',key,value | 'C',key | 'A'
-- returns {'FENCED'} | {'BAD_STATE', status} | {'OK', exp, next_id, {next hash}, {state}}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'FENCED'}
end
local st = redis.call('HGET', KEYS[2], 'st')
if st ~= 'invoked' then
  return {'BAD_STATE', st or ''}
end
local id = string.sub(KEYS[2], #KEYS[2] - 37)
local i = 7
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'S' then
    redis.call('HSET', KEYS[6], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'C' then
    redis.call('HDEL', KEYS[6], ARGV[i + 1])
    i = i + 2
  else
    redis.call('DEL', KEYS[6])
    i = i + 1
  end
end
local cret = tonumber(redis.call('HGET', KEYS[2], 'cret') or '0')
local exp = ''
if cret > 0 then
  exp = tostring(tonumber(ARGV[2]) + cret)
  redis.call('HSET', KEYS[2], 'st', 'completed', 'rc', ARGV[3], 'rm', ARGV[4], 'rv', ARGV[5], 'exp', exp,
             'mt', ARGV[2])
  redis.call('HDEL', KEYS[2], 'in')
  redis.call('PEXPIRE', KEYS[2], cret)
else
  redis.call('DEL', KEYS[2])
end
redis.call('SREM', KEYS[3], id)
local kind_is_exclusive = redis.call('GET', KEYS[4]) == id
if not kind_is_exclusive then
  return {'OK', exp, '', {}, {}}
end
while true do
  local nxt = redis.call('LPOP', KEYS[5])
  if not nxt then
    redis.call('DEL', KEYS[4])
    return {'OK', exp, '', {}, {}}
  end
  local nkey = ARGV[6] .. nxt
  if redis.call('HGET', nkey, 'st') == 'inboxed' then
    redis.call('SET', KEYS[4], nxt)
    redis.call('HSET', nkey, 'st', 'invoked', 'mt', ARGV[2])
    redis.call('SADD', KEYS[3], nxt)
    return {'OK', exp, nxt, redis.call('HGETALL', nkey), redis.call('HGETALL', KEYS[6])}
  end
  -- an inbox entry that is no longer waiting (killed or purged) is skipped
end
