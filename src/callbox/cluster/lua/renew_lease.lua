#!lua flags=no-cluster
-- A node's lease (commit.lua says the keys). ARGV: prefix, node, until (cluster ms).
-- Reply: 1 if the node still held its lease, 0 if another had taken it for dead.
local nodes = ARGV[1] .. 'nodes'
local held = redis.call('ZSCORE', nodes, ARGV[2])
redis.call('ZADD', nodes, ARGV[3], ARGV[2])
return held and 1 or 0
