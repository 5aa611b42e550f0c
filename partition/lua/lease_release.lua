-- lease_release: give a lease back so the partition's new winner can take it at once.
-- KEYS[1]=lease; ARGV[1]=fence token; returns 1 (released) or 0 (was not ours)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
