-- apply and append, part: the journal and effect ops (invocation.encode_ops). op_handlers maps an opcode to its
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

-- Check every opcode from ARGV[first] on before the first write: an error reply names the
-- transition when one is unknown (a malformed call changes nothing), nil when all are known.
local function check_ops(first, transition)
  local i = first
  while i <= #ARGV do
    if not op_handlers[ARGV[i]] then
      return redis.error_reply(transition .. ': unknown op ' .. tostring(ARGV[i]))
    end
    i = i + 1 + OP_ARGS[ARGV[i]]
  end
  return nil
end

-- Run the ops from ARGV[first] on, in order, for the attempt `run`.
local function run_ops(run, first)
  local i = first
  while i <= #ARGV do
    local op = ARGV[i]
    op_handlers[op](run, i)
    i = i + 1 + OP_ARGS[op]
  end
end
