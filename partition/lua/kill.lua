-- kill: stop an invocation at once: it completes with the killed failure (kept for its retention,
-- else deleted), exactly as an END completes it: waiting parents answered through the outbox, the
-- journal kept for its journal retention (else dropped), the key lock released or handed to the
-- inbox head. One that never started
-- (scheduled, inboxed) is taken out of its timers / inbox, its parents get the killed failure and
-- nothing is kept (Restate answers its output 404 afterwards). A concurrency slot it held goes to
-- its vqueue's next invocations (scheduled, start timers due now). scripts.py composes it from
-- _parents, _scope, _apply_end, _lifecycle and this file.
-- KEYS as apply.lua: 1=lease 2=inv 3=active 4=lock 5=inbox 6=state 7=journal 8=timers 9=outbox
-- 10=promises 11=promise waiters
-- ARGV[1]=fence token ARGV[2]=invocation id ARGV[3]=now_ms ARGV[4]=invocation hash prefix
-- ARGV[5]=the encoded killed result field (invocation.KILLED)
-- returns {FENCED} | {NOT_FOUND, ''} | {COMPLETED, status}
--       | {DONE, status found, expires ms or '', next id or '', {next hash}, {next state}, parents notified,
--          {woken: ids to start (a scoped inbox head; vqueue admissions also have start timers)}}
local id = ARGV[2]
local st, refused = lifecycle_head()
if refused then
  return refused
end
unqueue(KEYS[8], KEYS[5], id)
if st == ST_SCHEDULED or st == ST_INBOXED then
  vq_release(KEYS[2], id, redis.call('HGET', KEYS[2], F_VQUEUE), KEYS[8], ARGV[3])
  local notified = notify_parents(KEYS[9], redis.call('HGET', KEYS[2], F_PARENTS), ARGV[5])
  redis.call('DEL', KEYS[2], KEYS[7])
  index_remove(KEYS[2], id)
  return {MANAGE_DONE, st, '', '', {}, {}, notified, {}}
end
local run = {id = id, now = ARGV[3], result = ARGV[5], inv_prefix = ARGV[4], woken = {}}
local exp, next_id, next_hash, next_state, notified = complete(run)
return {MANAGE_DONE, st, exp, next_id, next_hash, next_state, notified, run.woken}
