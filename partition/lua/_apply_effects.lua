-- apply, part: the journal and effect ops (invocation.encode_ops). op_handlers maps an opcode to its
-- handler, which gets the attempt `run` ({id, now, woken, grew}) and the ARGV index of the
-- opcode; its arguments follow it (OP_ARGS[opcode] of them, generated from the op dataclasses).
-- KEYS as in apply.lua: 2=inv 6=state 7=journal 8=timers 9=outbox.
local op_handlers = {}

-- Append a notification to this invocation's journal once; the journal grew if it was new.
local function own_note(run, key, frame)
  if append_note(KEYS[2], KEYS[7], key, frame) then
    run.grew = true
  end
end

op_handlers[OP_JOURNAL] = function(run, i)
  redis.call('RPUSH', KEYS[7], ARGV[i + 1])
  run.grew = true
end

op_handlers[OP_NOTE] = function(run, i)
  own_note(run, ARGV[i + 1], ARGV[i + 2])
end

op_handlers[OP_SET_STATE] = function(_, i)
  redis.call('HSET', KEYS[6], ARGV[i + 1], ARGV[i + 2])
end

op_handlers[OP_CLEAR_STATE] = function(_, i)
  redis.call('HDEL', KEYS[6], ARGV[i + 1])
end

op_handlers[OP_CLEAR_ALL_STATE] = function()
  redis.call('DEL', KEYS[6])
end

op_handlers[OP_TIMER] = function(_, i)
  redis.call('ZADD', KEYS[8], ARGV[i + 1], ARGV[i + 2])
end

op_handlers[OP_OUTBOX] = function(_, i)
  redis.call('RPUSH', KEYS[9], ARGV[i + 1])
end
