#!lua flags=no-cluster
-- One batch of transactions, in order, each whole or not at all: MemoryBackend._apply in Lua
-- (callbox/cluster/backend.py is the contract; redis_backend.py builds ARGV and reads the reply).
--
-- Keys are built here from the prefix, not declared in KEYS: a transaction's keys are known
-- only as its arguments are read, and `no-cluster` makes Redis Cluster refuse the script rather
-- than run it on a slot that does not hold them (one primary, decision 0014).
--
-- ARGV: prefix, batch id, then the batch as two strings: `ints`, 64-bit big-endian integers,
-- and `blob`, every key, session id and frame end to end, each one's length in `ints` where
-- it is taken (coredis spends ~2 us of client CPU on each argument it sends). In order:
--   number of transactions, then per transaction:
--   n, (key, version) * n                          the reads
--   n, (key, data) * n                             the writes
--   n, key * n                                     the deletes
--   n, op * n                                      outbox operations, each a code and a session:
--      1 sid conn max_messages max_bytes (open) | 2 sid conn last_seq (attach)
--      | 3 sid unsent_from (detach) | 4 sid (detach from the next seq)
--      | 5 sid last_seq (acknowledge) | 6 sid (close)
--   0 | 1, session id, cseq                         the client message applied, if one was
--   n, (session id, frame) * n                     the deliveries
--   0 | 1, timer, deadline                         the timer fired, if the event is a firing
--   n, (timer, 0 | 1, deadline) * n                timers disarmed (0) or armed (1)
-- ARGV[5]: how long "last_seen:" records are kept, ms (they expire; nothing else does).
-- ARGV[6]: the latest time the batch may apply (see below).
-- Reply, one per transaction: {0, version, {seq...}, {conn...}} (conn 0: the session is away)
-- | {1, {key...}} | {2, {session id...}} | {3} (too late: nothing applied).
--
-- Every item is taken in its own statement: Lua leaves the order of an expression list's
-- evaluation undefined.
--
-- Keys: <prefix>r:<key> a record, a hash {v = version, d = data}; <prefix>q:<sid> a session's
-- outbox, eight integers packed as META says (next seq, first seq held, bytes held, the
-- connection it is attached to (0: none), unsent_from, max messages, max bytes, the last cseq
-- applied: a GET and a SET a commit, where a hash took an HMGET, an LLEN and an HSET) and <prefix>o:<sid> its frames, a list, oldest
-- first; <prefix>version the counter every commit draws its version from;
-- <prefix>idem:<batch id> a batch's reply, kept 300 s; <prefix>timers a sorted set of the
-- armed timers by deadline (cluster ms); <prefix>nodes the nodes' leases (until, cluster ms).

local META = '>i8i8i8i8i8i8i8i8'
local prefix = ARGV[1]
local idem = prefix .. 'idem:' .. ARGV[2]
local done = redis.call('GET', idem)
if done then
  return cmsgpack.unpack(done)
end

local ints, ints_at, blob, blob_at = ARGV[3], 1, ARGV[4], 1
local last_seen_ttl = tonumber(ARGV[5])

-- ARGV[6]: the latest time (cluster ms) the batch may apply, 0 for any. A node that gave up
-- waiting for a frozen Redis has told its clients "not applied": when Redis wakes up, the
-- batch must not apply after all. Every transaction is then {3}, kept like any outcome.
local not_after = tonumber(ARGV[6])
if not_after > 0 then
  local time = redis.call('TIME')
  if tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) > not_after then
    local expired = {}
    for i = 1, struct.unpack('>i8', ints) do
      expired[i] = {3}
    end
    redis.call('SET', idem, cmsgpack.pack(expired), 'EX', 300)
    return expired
  end
end
local function take_number()
  local n
  n, ints_at = struct.unpack('>i8', ints, ints_at)
  return n
end
local function take()
  local length = take_number()
  blob_at = blob_at + length
  return string.sub(blob, blob_at - length, blob_at - 1)
end

-- An outbox as a transaction leaves it, in Lua only until the transaction commits. Its frames
-- are the `stored` ones in Redis followed by `new` ones; `dropped` of them, from the front,
-- are gone. `fresh`: opened by this transaction (the list in Redis, if any, is an old one).
local function new_box(sid, conn, max_messages, max_bytes)
  return {
    q = prefix .. 'q:' .. sid, o = prefix .. 'o:' .. sid,
    n = 1, held = 0, conn = conn, unsent = 1, mm = max_messages, mb = max_bytes, cseq = 0,
    stored = 0, new = {}, dropped = 0, fresh = true,
  }
end

local function load_box(sid)
  local box = new_box(sid)
  local meta = redis.call('GET', box.q)
  if not meta then
    return false
  end
  local first
  box.n, first, box.held, box.conn, box.unsent, box.mm, box.mb, box.cseq = struct.unpack(META, meta)
  box.stored, box.fresh = box.n - first, false
  return box
end

local function count(box)
  return box.stored + #box.new - box.dropped
end

-- Drops the `k` oldest frames; returns their bytes (read from Redis for the stored ones).
local function drop_front(box, k)
  local bytes, i = 0, box.dropped
  local stored_end = math.min(i + k, box.stored)
  if i < stored_end then
    for _, frame in ipairs(redis.call('LRANGE', box.o, i, stored_end - 1)) do
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
local function hold(box, frame)
  local seq = box.n
  box.n = box.n + 1
  box.new[#box.new + 1] = frame
  box.held = box.held + #frame
  local lost_unread = false
  while (box.held > box.mb or count(box) > box.mm) and count(box) > 1 do
    if box.conn == 0 and box.n - count(box) >= box.unsent then
      lost_unread = true
    end
    box.held = box.held - drop_front(box, 1)
  end
  return seq, lost_unread
end

local function save_box(box)
  if box.fresh then
    redis.call('DEL', box.o)
  end
  local from_stored = math.min(box.dropped, box.stored)
  if from_stored > 0 then
    redis.call('LTRIM', box.o, from_stored, -1)
  end
  -- RPUSH in slices: unpack's arguments are bounded by Lua's C stack.
  local first = math.max(0, box.dropped - box.stored) + 1
  while first <= #box.new do
    local last = math.min(first + 999, #box.new)
    redis.call('RPUSH', box.o, unpack(box.new, first, last))
    first = last + 1
  end
  redis.call('SET', box.q, struct.pack(META, box.n, box.n - count(box), box.held,
    box.conn, box.unsent, box.mm, box.mb, box.cseq))
end

-- Adds `name` to a transaction's set of conflicts, made at its first one: most have none.
-- The set is also the list of names, in the order found.
local function conflict(stale, name)
  stale = stale or {}
  if not stale[name] then
    stale[name] = true
    stale[#stale + 1] = name
  end
  return stale
end

local version = tonumber(redis.call('GET', prefix .. 'version')) or 0
local boxes, order -- the outboxes a transaction touches, by session id, and those ids in order
local was_on -- by session id: the connection its outbox was attached to before (0: none)

local function box_of(sid)
  if boxes[sid] == nil then
    boxes[sid] = load_box(sid)
    order[#order + 1] = sid
    was_on[sid] = boxes[sid] and boxes[sid].conn or 0
  end
  return boxes[sid]
end

-- <prefix>ns:<node> holds the sessions attached to that node's connections (session id to
-- connection): what another node takes over when that one dies. A connection id is its node's
-- number times 2^32 plus a count (callbox/cluster/backend.py, CONN_BITS).
local function index_move(sid, from, to)
  if from == to then
    return
  end
  if from ~= 0 then
    redis.call('HDEL', prefix .. 'ns:' .. math.floor(from / 4294967296), sid)
  end
  if to ~= 0 then
    redis.call('HSET', prefix .. 'ns:' .. math.floor(to / 4294967296), sid, to)
  end
end

-- One transaction: its outcome.
local function apply()
  local stale = nil
  for _ = 1, take_number() do
    local key = take()
    local version_read = take_number()
    if (tonumber(redis.call('HGET', prefix .. 'r:' .. key, 'v')) or 0) ~= version_read then
      stale = conflict(stale, key)
    end
  end
  local writes, deletes = {}, {}
  for i = 1, 2 * take_number() do
    writes[i] = take()
  end
  for i = 1, take_number() do
    deletes[i] = take()
  end

  boxes, order, was_on = {}, {}, {}
  for _ = 1, take_number() do
    local code = take_number()
    local sid = take()
    local box = box_of(sid)
    if code == 1 then -- open
      if box then
        stale = conflict(stale, 'outbox:' .. sid)
      end
      local conn = take_number()
      local max_messages = take_number()
      boxes[sid] = new_box(sid, conn, max_messages, take_number())
    else
      local conn, arg = nil, nil
      if code == 2 then
        conn = take_number()
      end
      if code == 2 or code == 3 or code == 5 then
        arg = take_number()
      end
      if not box then
        stale = conflict(stale, 'outbox:' .. sid)
      elseif code == 6 then -- close
        boxes[sid] = false
      elseif code == 2 then -- attach
        local first = box.n - count(box)
        if not (first - 1 <= arg and arg <= box.n - 1) then
          stale = conflict(stale, 'outbox:' .. sid)
        end
        box.conn = conn
      elseif code == 3 or code == 4 then -- detach
        box.conn = 0
        box.unsent = arg or box.n
      elseif arg > box.n - 1 then -- acknowledge
        stale = conflict(stale, 'outbox:' .. sid)
      else
        local first = box.n - count(box)
        local k = math.max(0, math.min(arg - first + 1, count(box)))
        box.held = box.held - drop_front(box, k)
      end
    end
  end
  if take_number() == 1 then -- the client message applied: its cseq must be new
    local sid = take()
    local cseq = take_number()
    local box = box_of(sid)
    if box then -- else the message ended its session (`bye`)
      if cseq <= box.cseq then
        stale = conflict(stale, 'outbox:' .. sid)
      end
      box.cseq = cseq
    end
  end
  local deliveries = {} -- session id, frame, session id, frame...
  for i = 1, 2 * take_number(), 2 do
    local sid = take()
    deliveries[i], deliveries[i + 1] = sid, take()
    if not box_of(sid) then -- records name only live sessions: a stale cache
      stale = conflict(stale, 'outbox:' .. sid)
    end
  end
  local fired = nil
  if take_number() == 1 then -- a timer's firing: it must still be armed for that deadline
    local timer = take()
    fired = timer
    if tonumber(redis.call('ZSCORE', prefix .. 'timers', timer)) ~= take_number() then
      stale = conflict(stale, 'timer:' .. timer)
    end
  end
  local timers = {} -- timer, deadline or false, ...
  for i = 1, 2 * take_number(), 2 do
    timers[i] = take()
    local armed = take_number() == 1
    local deadline = take_number()
    timers[i + 1] = armed and deadline
  end
  if stale then
    return {1, stale}
  end

  local seqs, conns, overflowing = {}, {}, nil
  for i = 1, #deliveries, 2 do
    local sid = deliveries[i]
    local seq, lost_unread = hold(boxes[sid], deliveries[i + 1])
    seqs[#seqs + 1] = seq
    conns[#conns + 1] = boxes[sid].conn
    if lost_unread then
      overflowing = conflict(overflowing, sid)
    end
  end
  if overflowing then
    return {2, overflowing}
  end

  version = version + 1
  for i = 1, #writes, 2 do
    local key = prefix .. 'r:' .. writes[i]
    redis.call('HSET', key, 'v', version, 'd', writes[i + 1])
    if string.sub(writes[i], 1, 10) == 'last_seen:' then
      redis.call('PEXPIRE', key, last_seen_ttl)
    end
  end
  for _, key in ipairs(deletes) do
    redis.call('DEL', prefix .. 'r:' .. key)
  end
  if fired then
    redis.call('ZREM', prefix .. 'timers', fired)
  end
  for i = 1, #timers, 2 do
    if timers[i + 1] then
      redis.call('ZADD', prefix .. 'timers', timers[i + 1], timers[i])
    else
      redis.call('ZREM', prefix .. 'timers', timers[i])
    end
  end
  for _, sid in ipairs(order) do
    local box = boxes[sid]
    if box then
      save_box(box)
      index_move(sid, was_on[sid], box.conn)
    else -- closed
      redis.call('DEL', prefix .. 'q:' .. sid, prefix .. 'o:' .. sid)
      index_move(sid, was_on[sid], 0)
    end
  end
  return {0, version, seqs, conns}
end

local outcomes = {}
for i = 1, take_number() do
  outcomes[i] = apply()
end
redis.call('SET', prefix .. 'version', version)
redis.call('SET', idem, cmsgpack.pack(outcomes), 'EX', 300)
return outcomes
