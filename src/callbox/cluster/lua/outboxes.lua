#!lua flags=no-writes,no-cluster
-- Sessions' outboxes (commit.lua says the keys). ARGV: prefix, session id...
-- Reply: next seq, first seq held, attached (1/0), unsent_from per session (0s: none).
local prefix, reply = ARGV[1], {}
for i = 2, #ARGV do
  local meta = redis.call('GET', prefix .. 'q:' .. ARGV[i])
  local at = 4 * i - 7
  if meta then
    local next_seq, first, _, attached, unsent_from = struct.unpack('>i8i8i8i8i8', meta)
    reply[at], reply[at + 1], reply[at + 2], reply[at + 3] = next_seq, first, attached, unsent_from
  else
    reply[at], reply[at + 1], reply[at + 2], reply[at + 3] = 0, 0, 0, 0
  end
end
return reply
