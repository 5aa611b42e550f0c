-- apply, terminal END (run.result = the encoded result field, ARGV[9]): answer waiting parents,
-- keep the completed invocation for its retention (else delete it) and its journal for its journal
-- retention (else drop it), release the key lock or hand it to the inbox head. `complete` is shared with kill.lua, which uses the
-- same KEYS layout (2=inv 3=active 4=lock 5=inbox 6=state 7=journal 9=outbox 10/11=promises) and
-- sets run.result and run.inv_prefix itself.

-- Keep the journal of the completed invocation for `journal_ms`, at most `retention_ms` (a journal
-- never outlives its invocation, Restate's cap): the input entry is moved from the hash to the
-- head of the journal list, so the list is the whole journal (index 0 = input) and expires in one
-- piece on its own (PEXPIRE). Without journal retention the journal is dropped.
-- True when the journal is kept.
local function retain_journal(journal_ms, retention_ms)
  local keep_ms = math.min(journal_ms, retention_ms)
  if keep_ms <= 0 then
    redis.call('DEL', KEYS[7])
    return false
  end
  local input = redis.call('HGET', KEYS[2], F_INPUT)
  if input then
    redis.call('LPUSH', KEYS[7], input)
  end
  redis.call('PEXPIRE', KEYS[7], keep_ms)
  return true
end

-- What a completed invocation keeps besides its status, result and expiry: each field has a
-- reader of completed invocations (docs/lifecycle.md, "Cost"). Target and kind: /query and the
-- CLI, purge (a workflow's state), restart-as-new; scope: locating its keys (target_of); `cret`:
-- /query's completed_at (`exp` - `cret`); `exec` and `rq`: a duplicate's execution time and
-- whether it re-sends the creating request (accept); `idk` (a client's idempotency key) and `by`
-- (its calling handler): /query. A plain call from the ingress has neither, nor `rq`. Everything else only matters while it runs.
local completed_fields = {F_SERVICE, F_HANDLER, F_KEY, F_KIND, F_SCOPE, F_LIMIT_KEY, F_COMPLETION_RETENTION,
                          F_EXECUTION_TIME, F_REQUEST_NONCE, F_IDEMPOTENCY_KEY, F_INVOKED_BY}
-- ... and with a retained journal its deployment pin and random seed: restart-as-new needs them
-- (`deployment=keep`, the pinned protocol version; a restart from a prefix keeps the seed, absent
-- for most: derived from the id), and without the journal there is nothing to restart.
local completed_with_journal = {F_SERVICE, F_HANDLER, F_KEY, F_KIND, F_SCOPE, F_LIMIT_KEY,
                                F_COMPLETION_RETENTION, F_EXECUTION_TIME, F_REQUEST_NONCE, F_IDEMPOTENCY_KEY,
                                F_INVOKED_BY, F_PINNED_DEPLOYMENT, F_PINNED_PROTOCOL, F_RANDOM_SEED}

-- Keep the completed invocation for `retention_ms`, written afresh: status, result and expiry
-- first, then `completed_fields` (`completed_with_journal` when the journal is kept: `journal_kept`;
-- the input, the notification index, the answered parents and the
-- attempt bookkeeping go). A new hash, not HDELs: a hash that ever held a value over
-- hash-max-ziplist-value (the input frame, usually) stays a hashtable, three to five times the size.
-- A workflow keeps its state and promises as long. Returns the expiry (ms).
local function retain(run, retention_ms, kind, journal_kept)
  local fields = journal_kept and completed_with_journal or completed_fields
  local kept = redis.call('HMGET', KEYS[2], unpack(fields))
  local exp = tostring(tonumber(run.now) + retention_ms)
  local record = {F_STATUS, ST_COMPLETED, F_RESULT, run.result, F_EXPIRES, exp}
  for i, f in ipairs(fields) do
    if kept[i] then
      record[#record + 1] = f
      record[#record + 1] = kept[i]
    end
  end
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], unpack(record))
  redis.call('PEXPIRE', KEYS[2], retention_ms)
  if kind == KIND_WORKFLOW then
    redis.call('PEXPIRE', KEYS[6], retention_ms)
    redis.call('PEXPIRE', KEYS[10], retention_ms)
    redis.call('PEXPIRE', KEYS[11], retention_ms)
  end
  return exp
end

-- If this invocation holds the key lock, give it to the first invocation still inboxed behind it
-- (reached through run.inv_prefix, the invocation hash prefix), or free it. State edits queued
-- before that invocation (_state.lua) are applied on the way, in order. Returns that invocation's
-- id, hash and the key's state, or '' and empty tables.
local function hand_over(run)
  if redis.call('GET', KEYS[4]) ~= run.id then
    return '', {}, {}
  end
  while true do
    local nxt = redis.call('LPOP', KEYS[5])
    if not nxt then
      redis.call('DEL', KEYS[4])
      return '', {}, {}
    end
    local nkey = run.inv_prefix .. nxt
    if not apply_queued_edit(KEYS[6], nxt) and redis.call('HGET', nkey, F_STATUS) == ST_INBOXED then
      redis.call('SET', KEYS[4], nxt)
      redis.call('HSET', nkey, F_STATUS, ST_INVOKED)
      redis.call('SADD', KEYS[3], nxt)
      return nxt, redis.call('HGETALL', nkey), redis.call('HGETALL', KEYS[6])
    end
  end
end

-- Complete the invocation with run.result. Returns the expiry ('' when not retained), the inbox
-- head that got the lock (id, hash, state) and how many parents were notified. Its concurrency
-- slot is handed to the next queued invocations of its vqueue (_scope.lua), which join run.woken.
-- A scoped inbox head joins run.woken too instead of being returned: the caller locates it with
-- its scope before starting it.
local function complete(run)
  local meta = redis.call('HMGET', KEYS[2], F_COMPLETION_RETENTION, F_KIND, F_PARENTS, F_VQUEUE,
                          F_JOURNAL_RETENTION)
  run.woken = run.woken or {}
  for _, admitted in ipairs(vq_release(KEYS[2], run.id, meta[4], KEYS[8], run.now)) do
    run.woken[#run.woken + 1] = admitted
  end
  local retention_ms = tonumber(meta[1] or '0')
  local notified = notify_parents(KEYS[9], meta[3], run.result)
  local exp = ''
  if retention_ms > 0 then
    local journal_kept = retain_journal(tonumber(meta[5] or '0'), retention_ms)
    exp = retain(run, retention_ms, meta[2], journal_kept)
  else
    redis.call('DEL', KEYS[2], KEYS[7])
  end
  redis.call('SREM', KEYS[3], run.id)
  local next_id, next_hash, next_state = hand_over(run)
  if next_id ~= '' and redis.call('HEXISTS', run.inv_prefix .. next_id, F_SCOPE) == 1 then
    run.woken[#run.woken + 1] = next_id
    return exp, '', {}, {}, notified
  end
  return exp, next_id, next_hash, next_state, notified
end

local function apply_end(run)
  local exp, next_id, next_hash, next_state, notified = complete(run)
  return {APPLY_COMPLETED, exp, next_id, next_hash, next_state, run.woken, notified}
end
