-- resume: drive a paused, backing-off or suspended invocation again now, with the retry policy
-- started from scratch (a paused one had exhausted it).
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=active KEYS[4]=timers
-- ARGV[1]=fence token ARGV[2]=invocation id ARGV[3]=the deployment to pin it to ('' = keep its pin;
-- an invocation no attempt pinned yet stays unpinned and picks the latest at its next attempt)
-- returns {FENCED} | {NOT_FOUND, ''} | {COMPLETED, status} | {ALREADY, status} (invoked)
--       | {WRONG_STATE, status} (scheduled or inboxed: never started) | {DONE, status found, {service, key}}
local id = ARGV[2]
local st, refused = lifecycle_head()
if refused then
  return refused
end
if st == ST_INVOKED then
  return {MANAGE_ALREADY, st}
end
if st == ST_SCHEDULED or st == ST_INBOXED then
  return {MANAGE_WRONG_STATE, st}
end
if ARGV[3] ~= '' and redis.call('HEXISTS', KEYS[2], F_PINNED_DEPLOYMENT) == 1 then
  redis.call('HSET', KEYS[2], F_PINNED_DEPLOYMENT, ARGV[3])
end
redis.call('ZREM', KEYS[4], TIMER_RETRY .. id)
reinvoke(KEYS[2], KEYS[3], id, true)
return {MANAGE_DONE, st, redis.call('HMGET', KEYS[2], F_SERVICE, F_KEY)}
