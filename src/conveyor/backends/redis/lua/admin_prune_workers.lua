-- Forget the workers whose last beat (the store's clock) is more than ARGV[3] seconds old.
-- Returns how many.
local gone = redis.call('ZRANGEBYSCORE', P .. ':beats', '-inf',
                        '(' .. fmt(NOW - tonumber(ARGV[3])))
for _, worker in ipairs(gone) do
    redis.call('HDEL', P .. ':workers', worker)
    redis.call('ZREM', P .. ':beats', worker)
end
return #gone
