#!lua flags=no-writes,no-cluster
-- Redis's clock in milliseconds (coredis 6.9's time() divides the microseconds by 1000).
local now = redis.call('TIME')
return now[1] * 1000 + math.floor(now[2] / 1000)
