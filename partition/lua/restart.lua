-- restart: create the invocation that restarts a completed one from a journal prefix (restart-as-
-- new with `from` > 0, or pinned to a deployment), on the original's partition (the new id has the
-- original's partition key, as in Restate). It is created scheduled with its start timer due now,
-- so attempt_start takes its key's lock or inboxes it as for any delayed start.
-- KEYS[1]=lease KEYS[2]=original's hash KEYS[3]=original's journal KEYS[4]=new hash
-- KEYS[5]=new journal KEYS[6]=timers
-- ARGV[1]=fence token ARGV[2]=new invocation id ARGV[3]=now ms ARGV[4]=the original's journal
-- length the prefix was planned from ARGV[5]=n, ARGV[6..5+n]=the new journal's entries (after its
-- input), ARGV[6+n..]=field, value pairs of the new hash (InvocationRecord.to_fields, then its
-- notification index fields)
-- returns {FENCED} | {GONE} (the original is no longer completed with that journal: purged)
--       | {ALREADY} (a re-sent command: the new invocation is there) | {OK}
if fenced() then
  return {RESTART_FENCED}
end
if redis.call('HGET', KEYS[2], F_STATUS) ~= ST_COMPLETED or redis.call('LLEN', KEYS[3]) ~= tonumber(ARGV[4]) then
  return {RESTART_GONE}
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {RESTART_ALREADY}
end
local n = tonumber(ARGV[5])
if n > 0 then
  redis.call('RPUSH', KEYS[5], unpack(ARGV, 6, 5 + n))
end
redis.call('HSET', KEYS[4], unpack(ARGV, 6 + n))
redis.call('ZADD', KEYS[6], ARGV[3], TIMER_START .. ARGV[2])
index_add(KEYS[4], ARGV[2])
return {RESTART_OK}
