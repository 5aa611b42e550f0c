-- attach: a handler's AttachInvocation / GetInvocationOutput reached the target's partition.
-- An unknown target answers not found, a completed one its result, at once; a running one is
-- joined by an attacher (its parents, answered at END by _apply_end.lua / kill / cancel) and
-- answered void for a get-output. Answers go to the caller's partition through the outbox; the
-- caller's notify dedupes a re-delivered one by its completion key.
-- KEYS[1]=lease KEYS[2]=target inv KEYS[3]=outbox
-- ARGV[1]=fence token ARGV[2]=caller id ARGV[3]=caller partition ARGV[4]=completion id
-- ARGV[5]='1' for a get-output ('' for an attach)
-- returns {FENCED} | {ANSWERED} | {JOINED}
if fenced() then
  return {ATTACH_FENCED}
end
local caller, cp, cid, output = ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
local mt = output and MT_GET_INVOCATION_OUTPUT_COMPLETION or MT_ATTACH_INVOCATION_COMPLETION
local st = redis.call('HMGET', KEYS[2], F_STATUS, F_RESULT, F_PARENTS)
local result
if not st[1] then
  result = TARGET_NOT_FOUND
elseif st[1] == ST_COMPLETED then
  result = st[2] or TARGET_NOT_FOUND
elseif output then
  result = PB_VOID
else
  local entry = caller .. '|' .. cp .. '|' .. cid .. '|' .. mt .. ','
  if not string.find(st[3] or '', entry, 1, true) then
    redis.call('HSET', KEYS[2], F_PARENTS, (st[3] or '') .. entry)
  end
  return {ATTACH_JOINED}
end
redis.call('RPUSH', KEYS[3], outbox_notify(cp, caller, COMPLETION_KEY .. cid, completion_frame(mt, cid, result)))
return {ATTACH_ANSWERED}
