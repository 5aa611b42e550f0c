-- outbox_ack: drop the first N outbox messages once they were delivered.
-- KEYS[1]=lease KEYS[2]=outbox; ARGV[1]=fence token ARGV[2]=count
-- returns 1, or 0 when fenced (the new owner delivers them again; delivery is idempotent)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('LTRIM', KEYS[2], tonumber(ARGV[2]), -1)
return 1
