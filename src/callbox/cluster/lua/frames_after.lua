#!lua flags=no-writes,no-cluster
-- Up to `limit` held frames after `after_seq` (commit.lua says the keys).
-- ARGV: prefix, session id, after_seq, limit. Reply: the first frame's seq, then the frames.
local prefix, sid = ARGV[1], ARGV[2]
local after_seq, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local meta = redis.call('GET', prefix .. 'q:' .. sid)
if not meta or limit <= 0 then
  return {0}
end
local _, first = struct.unpack('>i8i8', meta)
local skip = math.max(0, after_seq + 1 - first)
local reply = redis.call('LRANGE', prefix .. 'o:' .. sid, skip, skip + limit - 1)
table.insert(reply, 1, first + skip)
return reply
