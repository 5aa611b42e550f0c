-- scope_limits: the rule book changed: store the new concurrency (and rate) limits of some of this
-- partition's buckets and give the slots a raised limit frees to their queued invocations at once
-- (scheduled, start timers due now). A lowered limit takes effect as running invocations finish.
-- scripts.py composes it from _scope and this file.
-- KEYS[1]=lease KEYS[2]=the partition's invocation hash prefix (vqueue keys are derived from it)
-- KEYS[3]=timers
-- ARGV[1]=fence token ARGV[2]=now ms ARGV[3..]=bucket, admission pairs (a limit, or with a rate:
-- _scope.lua vq_parse)
-- returns {FENCED} | {OK, {admitted ids}}
if fenced() then
  return {SCOPE_LIMITS_FENCED}
end
local admitted = {}
for i = 3, #ARGV, 2 do
  local bucket, limit = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', vq_key(KEYS[2], 'lim'), bucket) == 1 then
    vq_configure(KEYS[2], bucket, limit)
    for _, id in ipairs(vq_fill(KEYS[2], bucket, KEYS[3], ARGV[2])) do
      admitted[#admitted + 1] = id
    end
  end
end
return {SCOPE_LIMITS_OK, admitted}
