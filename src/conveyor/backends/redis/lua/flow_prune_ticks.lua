-- Forget the ticks older than ARGV[3] seconds before now, but each entry's latest (to carry on
-- from). Returns how many went.
local cutoff = NOW - tonumber(ARGV[3])
local pruned = 0
for _, name in ipairs(redis.call('SMEMBERS', P .. ':cron')) do
    local ticks = P .. ':ticks:' .. name
    local latest = redis.call('ZRANGE', ticks, -1, -1, 'WITHSCORES')
    if #latest > 0 then
        local below = string.format('%.17g', cutoff)
        if tonumber(latest[2]) < cutoff then below = latest[2] end
        pruned = pruned + redis.call('ZREMRANGEBYSCORE', ticks, '-inf', '(' .. below)
        redis.call('ZREMRANGEBYSCORE', P .. ':fired:' .. name, '-inf', '(' .. below)
    end
end
return pruned
