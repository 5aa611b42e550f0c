-- lease_renew: extend a lease this worker still holds with the same token.
-- KEYS[1]=lease; ARGV[1]=fence token ARGV[2]=ttl_ms; returns 1 (renewed) or 0 (lost)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
