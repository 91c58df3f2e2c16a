-- Let at most ARGV[4] jobs of queue ARGV[3] run at once ('': no limit). A limit lifted or
-- raised wakes idle workers: jobs it held may start now.
local queue, limit = ARGV[3], tonumber(ARGV[4])
local before = tonumber(redis.call('HGET', P .. ':qlimit', queue))
if limit == nil then
    redis.call('HDEL', P .. ':qlimit', queue)
else
    redis.call('HSET', P .. ':qlimit', queue, ARGV[4])
end
if before ~= nil and (limit == nil or limit > before) then wake() end
return 0
