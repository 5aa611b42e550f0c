-- apply and append, part: what a transition that stored journal entries notes on the status
-- hash (KEYS[2]): when the journal last grew (Start.duration_since_last_stored_entry) and, with
-- the first entry an unpinned invocation stores, the deployment its attempt went to and the
-- protocol version (Restate pins there; later attempts go to the same deployment). `ending`: the
-- transition completes the invocation, whose retained hash keeps the pin but not the growth time.
local function note_growth(run, pin_deployment, pin_protocol, ending)
  if not ending then
    redis.call('HSET', KEYS[2], F_LAST_GROWTH, run.now)
  end
  if pin_deployment ~= '' and redis.call('HEXISTS', KEYS[2], F_PINNED_DEPLOYMENT) == 0 then
    redis.call('HSET', KEYS[2], F_PINNED_DEPLOYMENT, pin_deployment, F_PINNED_PROTOCOL, pin_protocol)
  end
end
