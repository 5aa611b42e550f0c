-- notify: append a notification (completion or signal) to an invocation's journal, once per
-- key, and wake the invocation if it is suspended waiting for it.
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=journal KEYS[4]=timers KEYS[5]=active
-- ARGV[1]=fence token ARGV[2]=invocation id ARGV[3]=notification key (c<id> | s<index> | n<hex name>)
-- ARGV[4]=framed notification ARGV[5]=timer member to remove ('' if none)
-- returns {FENCED} | {GONE} | {DUP} | {APPLIED, journal length} | {WOKEN, {service, key, scope}}
-- (APPLIED: the notification is the journal's last entry, so a live attempt that knows the
-- journal up to it can forward it without reading)
if fenced() then
  return {NOTIFY_FENCED}
end
if ARGV[5] ~= '' then
  redis.call('ZREM', KEYS[4], ARGV[5])
end
local st = redis.call('HGET', KEYS[2], F_STATUS)
if not st or st == ST_COMPLETED then
  return {NOTIFY_GONE}
end
if not append_note(KEYS[2], KEYS[3], ARGV[3], ARGV[4]) then
  return {NOTIFY_DUP}
end
if wake_if_awaited(KEYS[2], KEYS[5], ARGV[2], ARGV[3], st) then
  return {NOTIFY_WOKEN, redis.call('HMGET', KEYS[2], F_SERVICE, F_KEY, F_SCOPE)}
end
return {NOTIFY_APPLIED, redis.call('LLEN', KEYS[3])}
