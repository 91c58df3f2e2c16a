-- Revoke dashboard session ARGV[3] until ARGV[4] (the caller's clock); the sessions that have
-- expired since they were revoked are forgotten (their cookies are refused anyway).
redis.call('ZREMRANGEBYSCORE', P .. ':revoked', '-inf', '(' .. fmt(NOW))
redis.call('ZADD', P .. ':revoked', 'NX', fmt(tonumber(ARGV[4]) + SHIFT), ARGV[3])
return 0
