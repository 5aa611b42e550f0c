-- apply: store the outcome of one attempt atomically: the journal entries it produced, their
-- effects (state, timers, outbox, workflow promises) and its terminal message. scripts.py
-- composes it from _parents, _notes, _apply_effects, _apply_promises, _apply_growth, _apply_suspend,
-- _apply_error, _apply_end and this file: one script, one EVALSHA.
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=active KEYS[4]=lock KEYS[5]=inbox KEYS[6]=state
-- KEYS[7]=journal KEYS[8]=timers KEYS[9]=outbox KEYS[10]=promises KEYS[11]=promise waiters
-- ARGV[1]=fence token ARGV[2]=invocation id ARGV[3]=now_ms ARGV[4]=journal length the attempt replayed
-- ARGV[5]=failed attempts since the journal last grew (after this attempt)
-- ARGV[6]=invocation hash prefix ARGV[7]=journal prefix (same hash tag: inbox head, promise waiters)
-- ARGV[8]=terminal TERM_END | TERM_SUSPEND | TERM_ERROR, ARGV[9..11]=its arguments:
--   END:     ARGV[9]=encoded result field (invocation.Result.encode)
--   SUSPEND: ARGV[9]=awaited notification keys as ' c1 s1 n<hex> ' ARGV[10]=the apply's nonce
--   ERROR:   ARGV[9]=next status (backing-off | paused) ARGV[10]=retry at ms ARGV[11]=failure message
-- ARGV[APPLY_PIN_ARG], ARGV[APPLY_PIN_ARG + 1]=the deployment the attempt went to and its protocol
--   version ('' when the invocation is pinned already): stored if the attempt stored an entry
-- ARGV[APPLY_FIRST_OP..]=ops: an opcode, then OP_ARGS[opcode] arguments (invocation.encode_ops)
-- returns {FENCED} | {BAD_STATE, status or ''} (nothing stored)
--       | {OK, expires ms or '', next id or '', {next hash}, {next state}, {woken}, parents notified}  (END)
--       | {RESUME, {entries from the replayed length on}, {woken}}   (SUSPEND, already satisfied)
--       | {SUSPENDED, {woken}} | {BACKOFF, {woken}}
if fenced() then
  return {APPLY_FENCED}
end
local st = redis.call('HGET', KEYS[2], F_STATUS)
if st ~= ST_INVOKED then
  return {APPLY_BAD_STATE, st or ''}
end
local terminal = ARGV[8]
if terminal ~= TERM_END and terminal ~= TERM_SUSPEND and terminal ~= TERM_ERROR then
  return redis.error_reply('apply: unknown terminal ' .. tostring(terminal))
end
if terminal == TERM_SUSPEND and ARGV[10] ~= '' and redis.call('HGET', KEYS[2], F_APPLY_NONCE) == ARGV[10] then
  return {APPLY_BAD_STATE, st}  -- a retry of this very apply (it resumed, or a notify woke it)
end
local bad_op = check_ops(APPLY_FIRST_OP, 'apply')
if bad_op then
  return bad_op
end
local run = {id = ARGV[2], now = ARGV[3], woken = {}, grew = false, result = ARGV[9], inv_prefix = ARGV[6]}
run_ops(run, APPLY_FIRST_OP)
-- END writes the hash afresh (or deletes it) without the attempt bookkeeping: no need to set it
local ending = terminal == TERM_END
if not ending then
  redis.call('HSET', KEYS[2], F_ATTEMPTS, ARGV[5])
end
if run.grew then
  note_growth(run, ARGV[APPLY_PIN_ARG], ARGV[APPLY_PIN_ARG + 1], ending)
end
if terminal == TERM_SUSPEND then
  return apply_suspend(run)
end
if terminal == TERM_ERROR then
  return apply_error(run)
end
return apply_end(run)
