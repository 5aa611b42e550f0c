-- apply, terminal ERROR (ARGV[9] = next status, backing-off or paused; ARGV[10] = retry at ms;
-- ARGV[11] = the failure): out of `active`; a back-off gets its retry timer.
local function apply_error(run)
  redis.call('HSET', KEYS[2], F_STATUS, ARGV[9], F_LAST_FAILURE, ARGV[11])
  redis.call('SREM', KEYS[3], run.id)
  if ARGV[9] == ST_BACKING_OFF then
    redis.call('ZADD', KEYS[8], ARGV[10], TIMER_RETRY .. run.id)
  end
  return {APPLY_BACKOFF, run.woken}
end
