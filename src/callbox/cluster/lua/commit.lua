#!lua flags=no-cluster
-- One batch of transactions, in order, each whole or not at all: MemoryBackend._apply in Lua
-- (callbox/cluster/backend.py is the contract; redis_backend.py builds ARGV and reads the reply).
--
-- Keys are built here from the prefix, not declared in KEYS: a transaction's keys are known
-- only as its arguments are read, and `no-cluster` makes Redis Cluster refuse the script rather
-- than run it on a slot that does not hold them (one primary, decision 0014).
--
-- ARGV: prefix, batch id, number of transactions, then per transaction:
--   n, (key, version) * n                          the reads
--   n, (key, data) * n                             the writes
--   n, key * n                                     the deletes
--   n, op * n                                      outbox operations, each a code and a session:
--      'o' sid max_messages max_bytes | 'a' sid last_seq | 'd' sid unsent_from ('': the next)
--      | 'k' sid last_seq | 'c' sid
--   n, (session id, frame) * n                     the deliveries
-- Reply, one per transaction: {0, version, {seq...}} | {1, {key...}} | {2, {session id...}}.
--
-- Keys: <prefix>r:<key> a record {v = version, d = data}; <prefix>q:<sid> a session's outbox
-- {n = next seq, b = bytes held, a = attached (1/0), u = unsent_from, mm, mb = budgets} and
-- <prefix>o:<sid> its frames, oldest first (the first one's seq is n - LLEN); <prefix>version
-- the counter every commit draws its version from; <prefix>idem:<batch id> a batch's reply.

local prefix = ARGV[1]
local idem = prefix .. 'idem:' .. ARGV[2]
local done = redis.call('GET', idem)
if done then
  return cmsgpack.unpack(done)
end

local at = 4
local function take()
  at = at + 1
  return ARGV[at - 1]
end
local function take_number()
  return tonumber(take())
end

-- An outbox as a transaction leaves it, in Lua only until the transaction commits. Its frames
-- are the `stored` ones in Redis followed by `new` ones; `dropped` of them, from the front,
-- are gone. `fresh`: opened by this transaction (the list in Redis, if any, is an old one).
local function load_box(sid)
  local meta = redis.call('HMGET', prefix .. 'q:' .. sid, 'n', 'b', 'a', 'u', 'mm', 'mb')
  if not meta[1] then
    return false
  end
  return {
    n = tonumber(meta[1]), held = tonumber(meta[2]), attached = meta[3] == '1',
    unsent = tonumber(meta[4]), mm = tonumber(meta[5]), mb = tonumber(meta[6]),
    stored = redis.call('LLEN', prefix .. 'o:' .. sid), new = {}, dropped = 0, fresh = false,
  }
end

local function count(box)
  return box.stored + #box.new - box.dropped
end

-- Drops the `k` oldest frames; returns their bytes (read from Redis for the stored ones).
local function drop_front(box, sid, k)
  local bytes, i = 0, box.dropped
  local stored_end = math.min(i + k, box.stored)
  if i < stored_end then
    for _, frame in ipairs(redis.call('LRANGE', prefix .. 'o:' .. sid, i, stored_end - 1)) do
      bytes = bytes + #frame
    end
    i = stored_end
  end
  while i < box.dropped + k do
    bytes = bytes + #box.new[i - box.stored + 1]
    i = i + 1
  end
  box.dropped = box.dropped + k
  return bytes
end

-- `_Outbox.hold`: returns the frame's seq and whether room was made by dropping a frame the
-- detached client cannot have read.
local function hold(box, sid, frame)
  local seq = box.n
  box.n = box.n + 1
  box.new[#box.new + 1] = frame
  box.held = box.held + #frame
  local lost_unread = false
  while (box.held > box.mb or count(box) > box.mm) and count(box) > 1 do
    if not box.attached and box.n - count(box) >= box.unsent then
      lost_unread = true
    end
    box.held = box.held - drop_front(box, sid, 1)
  end
  return seq, lost_unread
end

local function save_box(sid, box)
  local q, o = prefix .. 'q:' .. sid, prefix .. 'o:' .. sid
  if not box then
    redis.call('DEL', q, o)
    return
  end
  if box.fresh then
    redis.call('DEL', o)
  end
  local from_stored = math.min(box.dropped, box.stored)
  if from_stored > 0 then
    redis.call('LTRIM', o, from_stored, -1)
  end
  -- RPUSH in slices: unpack's arguments are bounded by Lua's C stack.
  local first = math.max(0, box.dropped - box.stored) + 1
  while first <= #box.new do
    local last = math.min(first + 999, #box.new)
    redis.call('RPUSH', o, unpack(box.new, first, last))
    first = last + 1
  end
  redis.call('HSET', q, 'n', box.n, 'b', box.held, 'a', box.attached and 1 or 0,
    'u', box.unsent, 'mm', box.mm, 'mb', box.mb)
end

local function apply(outcomes)
  local stale, stale_list = {}, {}
  local function conflict(key)
    if not stale[key] then
      stale[key] = true
      stale_list[#stale_list + 1] = key
    end
  end

  for _ = 1, take_number() do
    local key, version = take(), take_number()
    if (tonumber(redis.call('HGET', prefix .. 'r:' .. key, 'v')) or 0) ~= version then
      conflict(key)
    end
  end
  local writes = {}
  for i = 1, 2 * take_number() do
    writes[i] = take()
  end
  local deletes = {}
  for i = 1, take_number() do
    deletes[i] = take()
  end

  local boxes, order = {}, {}
  local function box_of(sid)
    if boxes[sid] == nil then
      boxes[sid] = load_box(sid)
      order[#order + 1] = sid
    end
    return boxes[sid]
  end
  for _ = 1, take_number() do
    local code, sid = take(), take()
    local box = box_of(sid)
    if code == 'o' then
      if box then
        conflict('outbox:' .. sid)
      end
      boxes[sid] = {
        n = 1, held = 0, attached = true, unsent = 1, mm = take_number(), mb = take_number(),
        stored = 0, new = {}, dropped = 0, fresh = true,
      }
    else
      local arg = nil
      if code ~= 'c' then
        arg = take()
      end
      if not box then
        conflict('outbox:' .. sid)
      elseif code == 'c' then
        boxes[sid] = false
      elseif code == 'a' then
        local last_seq, first = tonumber(arg), box.n - count(box)
        if not (first - 1 <= last_seq and last_seq <= box.n - 1) then
          conflict('outbox:' .. sid)
        end
        box.attached = true
      elseif code == 'd' then
        box.attached = false
        box.unsent = tonumber(arg) or box.n
      else -- 'k'
        local last_seq = tonumber(arg)
        if last_seq > box.n - 1 then
          conflict('outbox:' .. sid)
        else
          local first = box.n - count(box)
          local k = math.max(0, math.min(last_seq - first + 1, count(box)))
          box.held = box.held - drop_front(box, sid, k)
        end
      end
    end
  end
  local deliveries = {}
  for i = 1, take_number() do
    local sid, frame = take(), take()
    if not box_of(sid) then -- records name only live sessions: a stale cache
      conflict('outbox:' .. sid)
    end
    deliveries[i] = {sid, frame}
  end
  if #stale_list > 0 then
    outcomes[#outcomes + 1] = {1, stale_list}
    return
  end

  local seqs, overflowing, overflow_list = {}, {}, {}
  for i, delivery in ipairs(deliveries) do
    local sid = delivery[1]
    local seq, lost_unread = hold(boxes[sid], sid, delivery[2])
    seqs[i] = seq
    if lost_unread and not overflowing[sid] then
      overflowing[sid] = true
      overflow_list[#overflow_list + 1] = sid
    end
  end
  if #overflow_list > 0 then
    outcomes[#outcomes + 1] = {2, overflow_list}
    return
  end

  local version = redis.call('INCR', prefix .. 'version')
  for i = 1, #writes, 2 do
    redis.call('HSET', prefix .. 'r:' .. writes[i], 'v', version, 'd', writes[i + 1])
  end
  for _, key in ipairs(deletes) do
    redis.call('DEL', prefix .. 'r:' .. key)
  end
  for _, sid in ipairs(order) do
    save_box(sid, boxes[sid])
  end
  outcomes[#outcomes + 1] = {0, version, seqs}
end

local outcomes = {}
for _ = 1, tonumber(ARGV[3]) do
  apply(outcomes)
end
redis.call('SET', idem, cmsgpack.pack(outcomes), 'EX', 300)
return outcomes
