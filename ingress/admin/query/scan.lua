-- scan: read one chunk of a partition's invocations for `/query`, keep those a filter admits, and
-- prune index entries whose invocation hash is gone (completed without retention, expired,
-- purged), atomically with the check, so an id accepted again meanwhile is never dropped.
-- KEYS[1]=index KEYS[2]=timers. The invocation hashes and journals are `<ARGV[1]><id>` and
-- `<ARGV[2]><id>`: built from the partition's prefixes (the same hash tag as KEYS[1], so the same
-- slot), since the ids come from the index itself.
-- ARGV[3]=first rank ARGV[4]=chunk size (ids from the index), or ARGV[3]='ids' and the ids last
-- ARGV[5]=n (fields read) ARGV[6..5+n]=hash fields, the first three status, service, key
-- then: count + allowed statuses (count 0 = any), count + allowed services, count + allowed keys,
-- the retry timer prefix, '1' to read retry due times, '1' to measure journals ('' not)[, the ids].
-- returns {ids looked at, pruned, ids, accept ms, retry due ms, journal lengths, field 1 .. field n}:
-- columns of the admitted invocations, absent values false (nil in the reply); the retry and
-- journal columns are empty unless asked for.
local inv_prefix, journal_prefix = ARGV[1], ARGV[2]
local n = tonumber(ARGV[5])
local fields = {}
for i = 1, n do
  fields[i] = ARGV[5 + i]
end
local at = 6 + n

local function read_set()
  local count = tonumber(ARGV[at])
  local set = nil
  if count > 0 then
    set = {}
    for i = 1, count do
      set[ARGV[at + i]] = true
    end
  end
  at = at + count + 1
  return set
end

local statuses, services, keys = read_set(), read_set(), read_set()
local retry_prefix, want_retry, want_journal = ARGV[at], ARGV[at + 1] == '1', ARGV[at + 2] == '1'
local ids, scores = {}, {}
if ARGV[3] == 'ids' then
  for i = at + 3, #ARGV do
    ids[#ids + 1] = ARGV[i]
    scores[#ids] = redis.call('ZSCORE', KEYS[1], ARGV[i]) or false
  end
else
  local first = tonumber(ARGV[3])
  local pairs_ = redis.call('ZRANGE', KEYS[1], first, first + tonumber(ARGV[4]) - 1, 'WITHSCORES')
  for i = 1, #pairs_, 2 do
    ids[#ids + 1] = pairs_[i]
    scores[#ids] = pairs_[i + 1]
  end
end

local function admits(set, value)
  return set == nil or (value and set[value]) or false
end

local out_ids, out_scores, out_retry, out_journal, out_fields, pruned = {}, {}, {}, {}, {}, 0
for j = 1, n do
  out_fields[j] = {}
end
for i, id in ipairs(ids) do
  local values = redis.call('HMGET', inv_prefix .. id, unpack(fields))
  if not values[1] then
    pruned = pruned + redis.call('ZREM', KEYS[1], id)
  elseif admits(statuses, values[1]) and admits(services, values[2]) and admits(keys, values[3]) then
    local row = #out_ids + 1
    out_ids[row] = id
    out_scores[row] = scores[i]
    if want_retry then
      out_retry[row] = redis.call('ZSCORE', KEYS[2], retry_prefix .. id) or false
    end
    if want_journal then
      out_journal[row] = redis.call('LLEN', journal_prefix .. id)
    end
    for j = 1, n do
      out_fields[j][row] = values[j] or false
    end
  end
end
local reply = {#ids, pruned, out_ids, out_scores, out_retry, out_journal}
for j = 1, n do
  reply[6 + j] = out_fields[j]
end
return reply
