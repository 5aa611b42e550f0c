-- lease_release: give a lease back so the partition's new winner can take it at once, and drop
-- the route if it is still ours.
-- KEYS[1]=lease KEYS[2]=route; ARGV[1]=fence token ARGV[2]=gRPC address
-- returns 1 (released) or 0 (was not ours: nothing written)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if redis.call('GET', KEYS[2]) == ARGV[2] .. '|' .. ARGV[1] then
    redis.call('DEL', KEYS[2])
  end
  return 1
end
return 0
