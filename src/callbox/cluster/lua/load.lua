#!lua flags=no-writes,no-cluster
-- Records (commit.lua says the keys). ARGV: prefix, key...
-- Reply: version, data per key (0 and nil when absent).
local prefix, reply = ARGV[1], {}
for i = 2, #ARGV do
  local record = redis.call('HMGET', prefix .. 'r:' .. ARGV[i], 'v', 'd')
  reply[2 * i - 3] = tonumber(record[1]) or 0
  reply[2 * i - 2] = record[2]
end
return reply
