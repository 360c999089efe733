#!lua flags=no-writes,no-cluster
-- Sessions' outboxes (commit.lua says the keys). ARGV: prefix, session id...
-- Reply: next seq, first seq held, connection (0: none), unsent_from, last cseq applied per
-- session (0s: no outbox).
local prefix, reply = ARGV[1], {}
for i = 2, #ARGV do
  local meta = redis.call('GET', prefix .. 'q:' .. ARGV[i])
  local at = 5 * (i - 2) + 1
  local next_seq, first, conn, unsent_from, cseq = 0, 0, 0, 0, 0
  if meta then
    local _
    next_seq, first, _, conn, unsent_from, _, _, cseq = struct.unpack('>i8i8i8i8i8i8i8i8', meta)
  end
  reply[at], reply[at + 1], reply[at + 2], reply[at + 3], reply[at + 4] =
    next_seq, first, conn, unsent_from, cseq
end
return reply
