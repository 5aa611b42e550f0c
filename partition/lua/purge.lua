-- purge: forget a completed invocation (its id and idempotency key become free; a workflow run
-- takes its state and promises along; its query index entry goes), or with ARGV[3] = '1' only its
-- retained journal (which holds its input since completion: a restart-as-new is impossible after).
-- KEYS[1]=lease KEYS[2]=inv KEYS[3]=journal KEYS[4]=state KEYS[5]=promises KEYS[6]=promise waiters
-- ARGV[1]=fence token ARGV[2]=invocation id ARGV[3]='1' to purge only the journal, else ''
-- returns {FENCED} | {NOT_FOUND, ''} | {NOT_COMPLETED, status} | {DONE, status}
if fenced() then
  return {MANAGE_FENCED}
end
local meta = redis.call('HMGET', KEYS[2], F_STATUS, F_KIND)
local st = meta[1] or ''
if st == '' then
  return {MANAGE_NOT_FOUND, st}
end
if st ~= ST_COMPLETED then
  return {MANAGE_NOT_COMPLETED, st}
end
redis.call('DEL', KEYS[3])
if ARGV[3] == '' then
  redis.call('DEL', KEYS[2])
  index_remove(KEYS[2], ARGV[2])
  if meta[2] == KIND_WORKFLOW then
    redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
  end
end
return {MANAGE_DONE, st}
