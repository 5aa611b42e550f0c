-- apply, terminal SUSPEND (ARGV[9] = awaited notification keys ' c1 s1 n<hex> ', ARGV[10] = the
-- apply's nonce): resume at once if one of them is stored already (no lost wake-up), else suspend
-- until notify stores one. Either way the status can be `invoked` again when a retry of this apply
-- (after a lost reply) comes, so the nonce is kept and the retry finds it.
local function apply_suspend(run)
  local awaited = ARGV[9]
  for key in string.gmatch(awaited, '%S+') do
    if redis.call('HEXISTS', KEYS[2], NOTE_PREFIX .. key) == 1 then
      if ARGV[10] ~= '' then
        redis.call('HSET', KEYS[2], F_APPLY_NONCE, ARGV[10])
      end
      return {APPLY_RESUME, redis.call('LRANGE', KEYS[7], tonumber(ARGV[4]), -1), run.woken}
    end
  end
  redis.call('HSET', KEYS[2], F_STATUS, ST_SUSPENDED, F_WAITING, awaited)
  if ARGV[10] ~= '' then
    redis.call('HSET', KEYS[2], F_APPLY_NONCE, ARGV[10])  -- a notify may wake it before a retry comes
  end
  redis.call('SREM', KEYS[3], run.id)
  return {APPLY_SUSPENDED, run.woken}
end
