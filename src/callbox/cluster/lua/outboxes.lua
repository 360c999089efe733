#!lua flags=no-writes,no-cluster
-- Sessions' outboxes (commit.lua says the keys). ARGV: prefix, session id...
-- Reply: next seq, frames held, attached (1/0), unsent_from per session (0, 0, 0, 0: none).
local prefix, reply = ARGV[1], {}
for i = 2, #ARGV do
  local sid = ARGV[i]
  local meta = redis.call('HMGET', prefix .. 'q:' .. sid, 'n', 'a', 'u')
  local at = 4 * i - 7
  if meta[1] then
    reply[at], reply[at + 1] = tonumber(meta[1]), redis.call('LLEN', prefix .. 'o:' .. sid)
    reply[at + 2], reply[at + 3] = tonumber(meta[2]), tonumber(meta[3])
  else
    reply[at], reply[at + 1], reply[at + 2], reply[at + 3] = 0, 0, 0, 0
  end
end
return reply
