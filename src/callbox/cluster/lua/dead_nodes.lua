#!lua flags=no-writes,no-cluster
-- Nodes whose lease ran out (commit.lua says the keys). ARGV: prefix, now (cluster ms).
return redis.call('ZRANGE', ARGV[1] .. 'nodes', '-inf', '(' .. ARGV[2], 'BYSCORE')
