-- How many jobs are queued in queue ARGV[3], and for how long (seconds, as text) the oldest
-- of them has been queued (false: none). Returns {count, age}.
local queue = ARGV[3]
local queued = tonumber(redis.call('HGET', P .. ':counts', 'queued:' .. queue)) or 0
if queued <= 0 then return {0, false} end
local oldest = admin_oldest_queued(queue)
if not oldest then return {queued, false} end
return {queued, fmt(math.max(0, NOW - oldest / 1000000))}
