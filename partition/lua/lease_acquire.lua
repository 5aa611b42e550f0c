-- lease_acquire: take a free partition lease, bump its fencing epoch and publish the route.
-- KEYS[1]=lease KEYS[2]=epoch KEYS[3]=route (all of one partition)
-- ARGV[1]=worker id ARGV[2]=ttl_ms ARGV[3]=this worker's gRPC address
-- returns the fence token '<worker>|<epoch>', or false when another worker holds the lease.
-- A lease held under this worker's own id belongs to an earlier process with the same id (a
-- process asks only for partitions it does not hold): the epoch is bumped all the same, so
-- that earlier process is fenced out. The route is written here, inside the fence, so only
-- the lease holder can ever point the partition at itself.
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, #ARGV[1] + 1) ~= ARGV[1] .. '|' then
  return false
end
local e = redis.call('INCR', KEYS[2])
local token = ARGV[1] .. '|' .. e
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[3] .. '|' .. token)
return token
