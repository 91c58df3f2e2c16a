-- Forget worker ARGV[3].
redis.call('HDEL', P .. ':workers', ARGV[3])
redis.call('ZREM', P .. ':beats', ARGV[3])
return 0
