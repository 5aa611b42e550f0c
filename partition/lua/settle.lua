-- settle: clean up after a fired timer or a resume that could not reach attempt_start: forget
-- an invocation that no longer exists (its timer member, its `active` entry), drop a timer
-- member its invocation does not wait for, or keep one it still waits for (or that wakes its
-- flow-control queue), pushed back to
-- ARGV[5] when given (so it is never left due and spinning, and never lost).
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=timers KEYS[4]=active
-- ARGV[1]=fence token ARGV[2]=invocation id ARGV[3]=timer member ('' = none)
-- ARGV[4]=the status that waits for that member ('' = none does) ARGV[5]=re-arm at ms ('' = leave it)
-- returns {FENCED} | {GONE} | {DROPPED} | {KEPT}
if fenced() then
  return {SETTLE_FENCED}
end
local member = ARGV[3]
local st = redis.call('HGET', KEYS[2], F_STATUS)
if not st then
  if member ~= '' then
    redis.call('ZREM', KEYS[3], member)
  end
  redis.call('SREM', KEYS[4], ARGV[2])
  return {SETTLE_GONE}
end
if member == '' then
  return {SETTLE_KEPT}
end
-- The start member of an inboxed invocation in a flow-control bucket is its queue's wake-up (the
-- next rate token): it is kept too, or a quiet queue would never drain.
local waits = st == ARGV[4]
  or (st == ST_INBOXED and string.sub(member, 1, #TIMER_START) == TIMER_START
      and (redis.call('HGET', KEYS[2], F_VQUEUE) or '') ~= '')
if waits then
  if ARGV[5] ~= '' then
    redis.call('ZADD', KEYS[3], 'XX', ARGV[5], member)
  end
  return {SETTLE_KEPT}
end
redis.call('ZREM', KEYS[3], member)
return {SETTLE_DROPPED}
