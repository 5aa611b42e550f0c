-- outbox_ack: drop the delivered outbox messages (by value, so a retried ack drops nothing
-- undelivered: an identical message left behind has the same effect as the one delivered).
-- KEYS[1]=lease KEYS[2]=outbox; ARGV[1]=fence token ARGV[2..]=the delivered messages
-- returns 1, or 0 when fenced (the new owner delivers them again; delivery is idempotent)
if fenced() then
  return 0
end
for i = 2, #ARGV do
  redis.call('LREM', KEYS[2], 1, ARGV[i])
end
return 1
