-- lease_renew: extend a lease this worker still holds with the same token, and write its route
-- again (so a route lost or overwritten by anyone heals within one renewal).
-- KEYS[1]=lease KEYS[2]=route; ARGV[1]=fence token ARGV[2]=ttl_ms ARGV[3]=gRPC address
-- returns 1 (renewed) or 0 (lost: nothing written)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3] .. '|' .. ARGV[1])
  return 1
end
return 0
