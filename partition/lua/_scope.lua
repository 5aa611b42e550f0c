-- _scope: concurrency slots and rate tokens of scoped invocations (flow control), changed only inside the
-- transitions that start and finish invocations, so a crash can neither leak a slot nor let an
-- extra invocation run. All keys of a partition's vqueues are derived from an invocation hash key
-- (`sg:{pI}:inv:<id>` -> `sg:{pI}:vq:...`): the same hash tag, so the same slot (like _index).
--   vq:run:<bucket>          set: ids holding a slot of the bucket (its size is the running count)
--   vq:lim                   hash: bucket -> concurrency limit (written by every admission)
--   vq:rr:<bucket>           list: the limit keys with queued ids, in round-robin order
--   vq:q:<bucket>|<lk>       list: the ids queued under one limit key, FIFO
--   vq:buckets               set: the buckets with running or queued ids (GET /limits/status)
--   vq:rate                  hash: bucket -> '<ms per token>|<burst>' (buckets under a rate rule)
--   vq:tat                   hash: bucket -> its token bucket's theoretical arrival time in ms (GCRA:
--                            a token is free from tat - (burst - 1) * interval on)
-- An admission is '<concurrency>' or '<concurrency>|<ms per token>|<burst>|<queue|reject>'
-- (shardgate.limits.Limits.admission). Under a rate an invocation also needs a token to start;
-- a queue waiting for one has a wake-up: the start timer of the id it serves next, due when the
-- next token is (`vq_arm`), whose firing (attempt_start) fills the bucket and arms it again.
-- An invocation takes its slot when it is first admitted (accept, or the start of a delayed one)
-- and keeps it through suspensions, back-offs and pauses until it completes, is killed or is
-- cancelled before it started.

local function vq_key(inv_key, suffix)
  local at = string.find(inv_key, ':inv:', 1, true)
  return string.sub(inv_key, 1, at) .. 'vq:' .. suffix
end

-- The hash key of invocation `id` on the partition of `inv_key`.
local function vq_inv_key(inv_key, id)
  local at = string.find(inv_key, ':inv:', 1, true)
  return string.sub(inv_key, 1, at + 4) .. id
end

-- An admission string -> concurrency limit (text), ms per token (nil: no rate), burst, reject.
local function vq_parse(adm)
  local conc, interval, burst, mode = string.match(adm, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  if not conc then
    return adm, nil, 1, false
  end
  return conc, tonumber(interval), tonumber(burst) or 1, mode == 'reject'
end

-- Store the admission of `bucket` (every admission does: the latest rule book wins).
local function vq_configure(inv_key, bucket, adm)
  local conc, interval, burst, reject = vq_parse(adm)
  redis.call('HSET', vq_key(inv_key, 'lim'), bucket, conc)
  if interval then
    redis.call('HSET', vq_key(inv_key, 'rate'), bucket, interval .. '|' .. burst)
  else
    redis.call('HDEL', vq_key(inv_key, 'rate'), bucket)
  end
  return conc, interval, burst, reject
end

-- The stored rate of `bucket`: ms per token and burst, or nil.
local function vq_rate(inv_key, bucket)
  local raw = redis.call('HGET', vq_key(inv_key, 'rate'), bucket)
  if not raw then
    return nil, 1
  end
  local interval, burst = string.match(raw, '^([^|]+)|([^|]+)$')
  return tonumber(interval), tonumber(burst)
end

local function vq_tat(inv_key, bucket)
  return tonumber(redis.call('HGET', vq_key(inv_key, 'tat'), bucket) or '0')
end

-- The ms from which `bucket` has a token (<= now: it has one now).
local function vq_token_at(inv_key, bucket, interval, burst)
  return vq_tat(inv_key, bucket) - (burst - 1) * interval
end

-- Spend one token of `bucket` at `now` (ms).
local function vq_spend(inv_key, bucket, interval, now)
  local tat = vq_tat(inv_key, bucket)
  if tat < now then
    tat = now
  end
  redis.call('HSET', vq_key(inv_key, 'tat'), bucket, string.format('%.3f', tat + interval))
end

-- Whether `id` may start now in `bucket` (limit `conc`, rate `interval`/`burst` or none); when it
-- may, it takes its slot (and token). Under a rate, a newcomer never overtakes the bucket's queue.
-- Returns took, and when not the ms from which a token is free (nil: no slot is).
local function vq_claim(inv_key, id, bucket, conc, interval, burst, now)
  local run = vq_key(inv_key, 'run:' .. bucket)
  if redis.call('SISMEMBER', run, id) == 1 then
    return true
  end
  if redis.call('SCARD', run) >= tonumber(conc) then
    return false, nil
  end
  if interval then
    local at = vq_token_at(inv_key, bucket, interval, burst)
    if at > now or redis.call('EXISTS', vq_key(inv_key, 'rr:' .. bucket)) == 1 then
      return false, at
    end
    vq_spend(inv_key, bucket, interval, now)
  end
  redis.call('SADD', run, id)
  redis.call('SADD', vq_key(inv_key, 'buckets'), bucket)
  return true
end

-- Take a slot of `bucket` for `id` under admission `adm` (stored), or under the bucket's stored
-- admission when ''/nil. Returns took, and when not the ms from which a token is free (nil: none
-- is missing, a slot is), and whether the admission refuses instead of queueing.
local function vq_take(inv_key, id, bucket, adm, now_ms)
  local conc, interval, burst, reject
  if adm and adm ~= '' then
    conc, interval, burst, reject = vq_configure(inv_key, bucket, adm)
  else
    conc = redis.call('HGET', vq_key(inv_key, 'lim'), bucket) or '0'
    interval, burst = vq_rate(inv_key, bucket)
    reject = false
  end
  local took, token_at = vq_claim(inv_key, id, bucket, conc, interval, burst, tonumber(now_ms))
  return took, token_at, reject
end

-- Queue `id` behind its limit key `lk` ('' = none) of `bucket`.
local function vq_enqueue(inv_key, id, bucket, lk)
  local q = vq_key(inv_key, 'q:' .. bucket .. '|' .. lk)
  if redis.call('RPUSH', q, id) == 1 then
    redis.call('RPUSH', vq_key(inv_key, 'rr:' .. bucket), lk)
  end
  redis.call('SADD', vq_key(inv_key, 'buckets'), bucket)
end

-- The next queued id of `bucket` that still waits (round robin over limit keys), or nil.
local function vq_pop(inv_key, bucket)
  local ring = vq_key(inv_key, 'rr:' .. bucket)
  while true do
    local lk = redis.call('LPOP', ring)
    if not lk then
      return nil
    end
    local q = vq_key(inv_key, 'q:' .. bucket .. '|' .. lk)
    local id = redis.call('LPOP', q)
    if redis.call('LLEN', q) > 0 then
      redis.call('RPUSH', ring, lk)
    end
    if id then
      local h = redis.call('HMGET', vq_inv_key(inv_key, id), F_STATUS, F_VQUEUE)
      if h[1] == ST_INBOXED and h[2] == bucket then
        return id
      end
    end
  end
end

-- The id the queue of `bucket` serves next (what vq_pop would return), dropping the ids at the
-- queues' heads that no longer wait; nil when none waits.
local function vq_head(inv_key, bucket)
  local ring = vq_key(inv_key, 'rr:' .. bucket)
  while true do
    local lk = redis.call('LINDEX', ring, 0)
    if not lk then
      return nil
    end
    local q = vq_key(inv_key, 'q:' .. bucket .. '|' .. lk)
    local id = redis.call('LINDEX', q, 0)
    if not id then
      redis.call('LPOP', ring)
    else
      local h = redis.call('HMGET', vq_inv_key(inv_key, id), F_STATUS, F_VQUEUE)
      if h[1] == ST_INBOXED and h[2] == bucket then
        return id
      end
      redis.call('LPOP', q)
    end
  end
end

-- Wake the queue of `bucket` at `at_ms` (its next token): the start timer of the id it serves
-- next, unless that one is due earlier already.
local function vq_arm(inv_key, bucket, timers_key, at_ms)
  local head = vq_head(inv_key, bucket)
  if not head then
    return
  end
  local member = TIMER_START .. head
  local due = redis.call('ZSCORE', timers_key, member)
  if not due or tonumber(due) > at_ms then
    redis.call('ZADD', timers_key, at_ms, member)
  end
end

-- Give free slots of `bucket` to its queued ids while its limit (and rate) allows: each becomes
-- scheduled with a start timer due `now_ms`. A queue left waiting for a token is armed (vq_arm).
-- A bucket with nothing running or queued is forgotten. Returns the ids.
local function vq_fill(inv_key, bucket, timers_key, now_ms)
  local run = vq_key(inv_key, 'run:' .. bucket)
  local limit = tonumber(redis.call('HGET', vq_key(inv_key, 'lim'), bucket) or '0')
  local interval, burst = vq_rate(inv_key, bucket)
  local now = tonumber(now_ms)
  local admitted = {}
  while redis.call('SCARD', run) < limit do
    if interval then
      local at = vq_token_at(inv_key, bucket, interval, burst)
      if at > now then
        vq_arm(inv_key, bucket, timers_key, math.ceil(at))
        break
      end
    end
    local nxt = vq_pop(inv_key, bucket)
    if not nxt then
      break
    end
    if interval then
      vq_spend(inv_key, bucket, interval, now)
    end
    redis.call('SADD', run, nxt)
    redis.call('HSET', vq_inv_key(inv_key, nxt), F_STATUS, ST_SCHEDULED)
    redis.call('ZADD', timers_key, now_ms, TIMER_START .. nxt)
    admitted[#admitted + 1] = nxt
  end
  if redis.call('SCARD', run) == 0 and redis.call('EXISTS', vq_key(inv_key, 'rr:' .. bucket)) == 0 then
    redis.call('SREM', vq_key(inv_key, 'buckets'), bucket)
    if interval and vq_tat(inv_key, bucket) <= now then
      redis.call('HDEL', vq_key(inv_key, 'tat'), bucket)  -- full again: as if never used
    end
  end
  return admitted
end

-- `id` (hash `inv_key`, bucket `bucket`) gives its slot back; as many queued ids as the limit
-- allows get one and become scheduled with a start timer due `now_ms`, so the timer loop (or the
-- caller, at once) starts them. Returns those ids.
local function vq_release(inv_key, id, bucket, timers_key, now_ms)
  if not bucket or bucket == '' then
    return {}
  end
  local run = vq_key(inv_key, 'run:' .. bucket)
  if redis.call('SREM', run, id) == 0 then
    if redis.call('HEXISTS', vq_key(inv_key, 'rate'), bucket) == 0 then
      return {}
    end
    -- A queued id leaves (kill, cancel): it may have carried its queue's token wake-up, so the
    -- queue is armed again, without it.
    redis.call('HSET', vq_inv_key(inv_key, id), F_VQUEUE, '')
  end
  return vq_fill(inv_key, bucket, timers_key, now_ms)
end
