-- _index: the partition's invocation index `sg:{pI}:idx` (zset: member = invocation id, score =
-- accept time ms), read by the admin API's `/query` so it never scans Redis for invocations.
-- The index key is derived from the invocation hash key (`sg:{pI}:inv:<id>` -> `sg:{pI}:idx`):
-- the same hash tag, so the same slot.
-- Entries whose hash is gone (completed without retention, expired) are pruned by the readers
-- (`ingress/admin/query/scan.lua`, atomically with the existence check); purge, and a kill or
-- cancel that removes a never-started invocation, drop theirs at once.

-- The index key of the partition whose invocation hash is `inv_key`.
local function index_key(inv_key)
  local at = string.find(inv_key, ':inv:', 1, true)
  return string.sub(inv_key, 1, at) .. 'idx'
end

-- List invocation `id` (whose hash `inv_key` was just written) at its accept time.
local function index_add(inv_key, id)
  local at_ms = redis.call('HGET', inv_key, F_LAST_GROWTH) or redis.call('TIME')[1] * 1000
  redis.call('ZADD', index_key(inv_key), 'NX', at_ms, id)
end

-- Forget invocation `id` (its hash `inv_key` was just deleted).
local function index_remove(inv_key, id)
  redis.call('ZREM', index_key(inv_key), id)
end
