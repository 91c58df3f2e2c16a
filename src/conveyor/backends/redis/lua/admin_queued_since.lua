-- Per queue with queued jobs, since when the oldest of them has been queued. Returns a flat
-- list: queue, time, queue, time...
local out = {}
for _, queue in ipairs(all_queues()) do
    if (tonumber(redis.call('HGET', P .. ':counts', 'queued:' .. queue)) or 0) > 0 then
        local oldest = admin_oldest_queued(queue)
        if oldest then
            out[#out + 1] = queue
            out[#out + 1] = fmt(oldest / 1000000)
        end
    end
end
return out
