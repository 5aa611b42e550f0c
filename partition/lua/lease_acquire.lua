-- lease_acquire: take a free partition lease and bump its fencing epoch.
-- KEYS[1]=lease KEYS[2]=epoch
-- ARGV[1]=worker id ARGV[2]=ttl_ms
-- returns the fence token '<worker>|<epoch>', or false when another worker holds the lease
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return cur
  end
  return false
end
local e = redis.call('INCR', KEYS[2])
local token = ARGV[1] .. '|' .. e
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
