-- Register or refresh worker ARGV[3] (its record as JSON in ARGV[4]), renew the leases of its
-- attempts ARGV[5] ("id:attempt,...") still its own until ARGV[6], and with ARGV[7] == '1'
-- list what runs under it. Returns {renewed {id, attempt, cancel_requested}, under {id,
-- attempt} or false}.
local worker = ARGV[3]
redis.call('HSET', P .. ':workers', worker, ARGV[4])
redis.call('ZADD', P .. ':beats', NOW, worker)
local lease_until = tonumber(ARGV[6]) + SHIFT
local renewed = {}
for pair in string.gmatch(ARGV[5], '[^,]+') do
    local id, attempt = string.match(pair, '^(%d+):(%d+)$')
    local jk = job_key(id)
    local f = redis.call('HMGET', jk, 'state', 'worker_id', 'attempt', 'cancel_requested')
    if f[1] == 'running' and f[2] == worker and f[3] == attempt then
        redis.call('HSET', jk, 'lease_until', fmt(lease_until))
        redis.call('ZADD', P .. ':running', lease_until, id)
        renewed[#renewed + 1] = {tonumber(id), tonumber(attempt), f[4] == '1' and 1 or 0}
    end
end
local under = false
if ARGV[7] == '1' then
    under = {}
    for _, id in ipairs(redis.call('SMEMBERS', P .. ':wr:' .. worker)) do
        local f = redis.call('HMGET', job_key(id), 'state', 'worker_id', 'attempt')
        if f[1] == 'running' and f[2] == worker then
            under[#under + 1] = {tonumber(id), tonumber(f[3])}
        end
    end
end
return {renewed, under}
