-- _parents: answering the invocations that called (or attached to) this one.

-- Queue a completion carrying `result_field` for every waiting parent in `pars` through the
-- outbox; returns how many were queued. An entry is 'id|partition|completion id,' for a caller
-- (a CallCompletion) or 'id|partition|completion id|message type,' for an attacher
-- (attach.lua: an AttachInvocationCompletion).
local function notify_parents(outbox_key, pars, result_field)
  local n = 0
  for pid, pp, cid, mt in string.gmatch(pars or '', '([^|,]+)|(%d+)|(%d+)|?(%d*),') do
    local frame = completion_frame(mt ~= '' and tonumber(mt) or MT_CALL_COMPLETION, cid, result_field)
    redis.call('RPUSH', outbox_key, outbox_notify(pp, pid, COMPLETION_KEY .. cid, frame))
    n = n + 1
  end
  return n
end
