-- append: store what a live attempt (a bidirectional stream that stays open) produced so far,
-- the journal entries and their effects, without a terminal: the invocation stays invoked and
-- the attempt goes on. scripts.py composes it from _notes, _apply_effects,
-- _apply_promises, _apply_growth and this file: one script, one EVALSHA. KEYS as in apply.lua.
-- ARGV[1]=fence token ARGV[2]=invocation id ARGV[3]=now_ms
-- ARGV[4]=journal length the attempt knows (it has replayed or been sent everything before it)
-- ARGV[5]=the attempt's nonce ARGV[6]=invocation hash prefix ARGV[7]=journal prefix (as apply.lua)
-- ARGV[8]=this append's number within the attempt (1, 2, ...)
-- ARGV[APPEND_PIN_ARG], ARGV[APPEND_PIN_ARG + 1]=the deployment the attempt went to and its
--   protocol version ('' when pinned)
-- ARGV[APPEND_FIRST_OP..]=ops, as in apply.lua
-- returns {FENCED} | {BAD_STATE, status or ''} (nothing stored: not invoked, not the next append
--         of this attempt, or a command after the known length: the attempt is stale)
--       | {APPENDED, journal length, {index, frame, ...}, {woken}}
--       | {DUP, journal length, {index, frame, ...}, {}}   (a retry of an append that was stored)
-- The {index, frame} pairs are the notifications in the journal from the known length on, in
-- journal order: those this append stored (run results, lazy state, callee ids) and those other
-- transitions appended meanwhile (notify, cancel, promise waiters). The other entries from the
-- known length on are this attempt's own commands, in order: nobody else appends commands.
if fenced() then
  return {APPEND_FENCED}
end
local st = redis.call('HGET', KEYS[2], F_STATUS)
if st ~= ST_INVOKED then
  return {APPEND_BAD_STATE, st or ''}
end

-- The notifications (message types 0x8000-0xFBFF; 0xFC00 on are custom commands) from `cursor`.
local function notes_since(cursor)
  local out = {}
  for j, entry in ipairs(redis.call('LRANGE', KEYS[7], cursor, -1)) do
    local b = string.byte(entry, 1)
    if b and b >= 128 and b < 252 then
      out[#out + 1] = cursor + j - 1
      out[#out + 1] = entry
    end
  end
  return out
end

local cursor = tonumber(ARGV[4])
local seq = tonumber(ARGV[8])
local this = ARGV[5] .. '|' .. ARGV[8]
local last = redis.call('HGET', KEYS[2], F_STREAM_SEQ)
if last == this then
  return {APPEND_DUP, redis.call('LLEN', KEYS[7]), notes_since(cursor), {}}
end
if seq > 1 and last ~= ARGV[5] .. '|' .. (seq - 1) then
  return {APPEND_BAD_STATE, st}  -- out of order, or an attempt superseded by a newer one
end
-- Only notifications may follow what the attempt knows: a command there is another attempt's
-- (this one is stale), and storing this one's after it would interleave two attempts' commands.
for _, entry in ipairs(redis.call('LRANGE', KEYS[7], cursor, -1)) do
  local b = string.byte(entry, 1)
  if not (b and b >= 128 and b < 252) then
    return {APPEND_BAD_STATE, st}
  end
end
local bad_op = check_ops(APPEND_FIRST_OP, 'append')
if bad_op then
  return bad_op
end
local run = {id = ARGV[2], now = ARGV[3], woken = {}, grew = false, inv_prefix = ARGV[6]}
run_ops(run, APPEND_FIRST_OP)
redis.call('HSET', KEYS[2], F_STREAM_SEQ, this)
if run.grew then
  redis.call('HSET', KEYS[2], F_ATTEMPTS, 0)  -- the attempt made progress: its failures start over
  note_growth(run, ARGV[APPEND_PIN_ARG], ARGV[APPEND_PIN_ARG + 1])
end
return {APPEND_APPENDED, redis.call('LLEN', KEYS[7]), notes_since(cursor), run.woken}
