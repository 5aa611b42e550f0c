-- state_edit: replace the state of one virtual object / workflow key (the admin API's
-- `POST /services/{svc}/state`), provided it is still the state whose version the caller checked
-- (its digest, ARGV[2]; '' = whatever it is). While the key is locked (an exclusive handler or a
-- workflow run holds it) the edit is queued in the key's inbox behind the invocations waiting
-- there, as Restate queues it, and applied when it reaches the head (`_apply_end.lua` hand_over),
-- if the state still has that digest then (else dropped, as a stale edit). scripts.py composes it
-- from _state and this file.
-- KEYS[1]=lease KEYS[2]=lock KEYS[3]=inbox KEYS[4]=state
-- ARGV[1]=fence token ARGV[2]=digest of the checked state ('' = unconditional)
-- ARGV[3]=the new state, encoded (scripts.encode_state; '' = clear it)
-- returns {FENCED} | {WRONG_STATE} (the state changed since it was checked: nothing written)
--       | {APPENDED} (queued behind the lock) | {DONE} (replaced)
if fenced() then
  return {MANAGE_FENCED}
end
local digest = ARGV[2]
if digest ~= '' and state_digest(KEYS[4]) ~= digest then
  return {MANAGE_WRONG_STATE}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('RPUSH', KEYS[3], queued_edit(digest, ARGV[3]))
  return {MANAGE_APPENDED}
end
replace_state(KEYS[4], ARGV[3])
return {MANAGE_DONE}
