-- schedule_fire: one due tick of a schedule, fired (its send queued in the outbox) or skipped,
-- and the schedule advanced to its next nominal time, in one fenced transition.
-- KEYS[1]=lease KEYS[2]=sched:<id> KEYS[3]=sched-due KEYS[4]=outbox KEYS[5]=sched-hist:<id>
-- ARGV[1]=fence token ARGV[2]=schedule id ARGV[3]=version planned with ARGV[4]=nominal ms of the tick
-- ARGV[5]=next nominal ms, '' once ended ARGV[6]=outbox entry, '' to skip ARGV[7]=invocation id
-- ARGV[8]=now_ms ARGV[9]=ticks skipped ARGV[10]=history entry ARGV[11]=history cap
-- returns SFIRE_DONE, SFIRE_STALE (an admin change or another firing came first: re-plan) or SFIRE_FENCED
if fenced() then
  return SFIRE_FENCED
end
if redis.call('HGET', KEYS[2], SF_VERSION) ~= ARGV[3] then
  return SFIRE_STALE
end
local due = redis.call('ZSCORE', KEYS[3], ARGV[2])
if not due or tonumber(due) ~= tonumber(ARGV[4]) then
  return SFIRE_STALE
end
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[3], ARGV[2])
else
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
end
redis.call('HSET', KEYS[2], SF_NEXT, ARGV[5])
if ARGV[6] ~= '' then
  redis.call('RPUSH', KEYS[4], ARGV[6])
  redis.call('HSET', KEYS[2], SF_LAST_NOMINAL, ARGV[4], SF_LAST_INVOCATION, ARGV[7], SF_LAST_FIRED, ARGV[8])
  redis.call('HINCRBY', KEYS[2], SF_FIRED, 1)
end
if tonumber(ARGV[9]) > 0 then
  redis.call('HINCRBY', KEYS[2], SF_SKIPPED, tonumber(ARGV[9]))
end
redis.call('LPUSH', KEYS[5], ARGV[10])
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[11]) - 1)
return SFIRE_DONE
