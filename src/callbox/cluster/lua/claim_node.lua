#!lua flags=no-cluster
-- Take a dead node's place, once (commit.lua says the keys). ARGV: prefix, node.
-- Reply: session id, connection, ... of the sessions attached to its connections; nothing if
-- another node claimed it first.
local prefix, node = ARGV[1], ARGV[2]
if redis.call('ZREM', prefix .. 'nodes', node) == 0 then
  return {}
end
local sessions = redis.call('HGETALL', prefix .. 'ns:' .. node)
redis.call('DEL', prefix .. 'ns:' .. node)
return sessions
