-- attempt_start: (re)start an invocation: a due scheduled invocation, a retry after back-off,
-- a woken suspended one, or a resume after the partition changed owner.
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=lock KEYS[4]=inbox KEYS[5]=state KEYS[6]=journal
-- KEYS[7]=timers KEYS[8]=active
-- ARGV[1]=fence token ARGV[2]=invocation id ARGV[3]=timer member that fired ('' if none), removed
-- whatever the outcome (a scheduled one's start member goes too when it is started without it)
-- ARGV[4]=now ms (the worker's clock; '' = Redis's)
-- A scheduled scoped invocation takes its concurrency slot (and rate token) here, or waits in its
-- vqueue (INBOXED). The start timer of a queued one is its queue's token wake-up (_scope.lua
-- vq_arm): it fills the bucket, and starts the id at once when the fill admitted it.
-- returns {FENCED} | {GONE} | {WAIT, status} | {INBOXED}
--       | {INVOKED, {hash}, {state (keyed kinds)}, {journal entries}, status it was started from}
if fenced() then
  return {START_FENCED}
end
local id = ARGV[2]
if ARGV[3] ~= '' then
  redis.call('ZREM', KEYS[7], ARGV[3])
end
local st = redis.call('HGET', KEYS[2], F_STATUS)
if not st then
  return {START_GONE}
end
local now = ARGV[4]
if not now or now == '' then
  now = redis.call('TIME')[1] * 1000
end
if st == ST_INBOXED and ARGV[3] == TIMER_START .. id then
  local bucket = redis.call('HGET', KEYS[2], F_VQUEUE)
  if bucket and bucket ~= '' then
    vq_fill(KEYS[2], bucket, KEYS[7], now)
    st = redis.call('HGET', KEYS[2], F_STATUS)
  end
end
if st ~= ST_INVOKED and st ~= ST_SCHEDULED and st ~= ST_BACKING_OFF then
  return {START_WAIT, st}
end
local kind = redis.call('HGET', KEYS[2], F_KIND)
if st == ST_SCHEDULED then
  redis.call('ZREM', KEYS[7], TIMER_START .. id)
  local vq = redis.call('HMGET', KEYS[2], F_VQUEUE, F_LIMIT_KEY)
  if vq[1] and vq[1] ~= '' then
    local took, token_at = vq_take(KEYS[2], id, vq[1], nil, now)
    if not took then
      vq_enqueue(KEYS[2], id, vq[1], vq[2] or '')
      redis.call('HSET', KEYS[2], F_STATUS, ST_INBOXED)
      if token_at then
        vq_arm(KEYS[2], vq[1], KEYS[7], math.max(math.ceil(token_at), tonumber(now)))
      end
      return {START_INBOXED}
    end
  end
end
if st == ST_SCHEDULED and kind == KIND_EXCLUSIVE then
  local holder = redis.call('GET', KEYS[3])
  if holder and holder ~= id then
    redis.call('RPUSH', KEYS[4], id)
    redis.call('HSET', KEYS[2], F_STATUS, ST_INBOXED)
    return {START_INBOXED}
  end
  redis.call('SET', KEYS[3], id)
end
redis.call('HSET', KEYS[2], F_STATUS, ST_INVOKED)
redis.call('SADD', KEYS[8], id)
local state = {}
if kind ~= KIND_SERVICE then
  state = redis.call('HGETALL', KEYS[5])
end
return {START_INVOKED, redis.call('HGETALL', KEYS[2]), state, redis.call('LRANGE', KEYS[6], 0, -1), st}
