-- pause: stop driving a running, suspended or backing-off invocation until it is resumed (it
-- keeps its key lock, journal and callers; the leader stops its attempt in flight; a notification
-- that arrives meanwhile is stored but wakes nothing).
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=active KEYS[4]=timers
-- ARGV[1]=fence token ARGV[2]=invocation id
-- returns {FENCED} | {NOT_FOUND, ''} | {COMPLETED, status} | {ALREADY, status} | {WRONG_STATE, status}
--       | {DONE, status found}
local id = ARGV[2]
local st, refused = lifecycle_head()
if refused then
  return refused
end
if st == ST_PAUSED then
  return {MANAGE_ALREADY, st}
end
if st ~= ST_INVOKED and st ~= ST_SUSPENDED and st ~= ST_BACKING_OFF then
  return {MANAGE_WRONG_STATE, st}
end
redis.call('ZREM', KEYS[4], TIMER_RETRY .. id)
redis.call('HSET', KEYS[2], F_STATUS, ST_PAUSED)
redis.call('SREM', KEYS[3], id)
return {MANAGE_DONE, st}
