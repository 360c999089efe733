#!lua flags=no-writes,no-cluster
-- Armed timers due before a time (commit.lua says the keys). ARGV: prefix, before (cluster ms),
-- limit. Reply: timer, deadline, timer, deadline..., earliest first.
return redis.call('ZRANGE', ARGV[1] .. 'timers', '-inf', '(' .. ARGV[2], 'BYSCORE', 'LIMIT', 0,
  ARGV[3], 'WITHSCORES')
