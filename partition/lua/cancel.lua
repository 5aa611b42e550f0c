-- cancel: cancel an invocation, from the admin API or from a handler (a signal with the cancel
-- index). One that never started (scheduled, inboxed) is removed: its timer member and inbox
-- entry go, its waiting parents get the cancelled failure through the outbox, nothing is kept; a
-- concurrency slot it held goes to its vqueue's next invocations (start timers due now).
-- A started one gets the cancel signal in its journal once (the SDK raises at its next await, so
-- compensations run) and is woken when suspended, backing off or paused.
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=active KEYS[4]=inbox KEYS[5]=journal KEYS[6]=timers KEYS[7]=outbox
-- ARGV[1]=fence token ARGV[2]=invocation id ARGV[3]=the encoded cancelled result field
-- (invocation.CANCELLED) ARGV[4]=the cancel signal's notification key ARGV[5]=its framed notification
-- returns {FENCED} | {NOT_FOUND, ''} | {COMPLETED, status}
--       | {DONE, status found, parents notified}          (never started: removed)
--       | {APPENDED, status found, woken 1/0, {service, key}}
local id = ARGV[2]
local st, refused = lifecycle_head()
if refused then
  return refused
end
if st == ST_SCHEDULED or st == ST_INBOXED then
  unqueue(KEYS[6], KEYS[4], id)
  vq_release(KEYS[2], id, redis.call('HGET', KEYS[2], F_VQUEUE), KEYS[6], redis.call('TIME')[1] * 1000)
  local notified = notify_parents(KEYS[7], redis.call('HGET', KEYS[2], F_PARENTS), ARGV[3])
  redis.call('DEL', KEYS[2], KEYS[5])
  index_remove(KEYS[2], id)
  return {MANAGE_DONE, st, notified}
end
append_note(KEYS[2], KEYS[5], ARGV[4], ARGV[5])
local woken = 0
if st ~= ST_INVOKED then
  redis.call('ZREM', KEYS[6], TIMER_RETRY .. id)
  reinvoke(KEYS[2], KEYS[3], id, st == ST_PAUSED)
  woken = 1
end
return {MANAGE_APPENDED, st, woken, redis.call('HMGET', KEYS[2], F_SERVICE, F_KEY)}
