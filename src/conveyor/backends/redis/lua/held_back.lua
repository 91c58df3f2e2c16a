-- Whether queued jobs wait in the unpaused queues ARGV[3] (JSON; '' for all) outside an open
-- circuit: false if none; else the seconds until the next rate window opens ('inf': none).
local queues = ARGV[3] ~= '' and cjson.decode(ARGV[3]) or all_queues()
local paused = {}
for _, q in ipairs(redis.call('SMEMBERS', P .. ':paused')) do paused[q] = true end
local held = false
local rates = {}
for _, q in ipairs(queues) do
    if not paused[q] then
        local prefix_len = #P + #(':lane:') + #q + 2
        for _, lane in ipairs(redis.call('SMEMBERS', P .. ':lanes:' .. q)) do
            if redis.call('ZCARD', lane) > 0 then
                local sig = string.sub(lane, prefix_len)
                local ck, rk, circuit = string.match(sig, '^([^\30]*)\30([^\30]*)\30(.*)$')
                if circuit == '' or
                        redis.call('HGET', P .. ':circuit:' .. circuit, 'state') ~= 'open' then
                    held = true
                    if rk ~= '' then rates[rk] = true end
                end
            end
        end
    end
end
if not held then return false end
local opens = nil
for rk, _ in pairs(rates) do
    local head = redis.call('ZRANGEBYSCORE', P .. ':rate:' .. rk, '(' .. fmt(NOW), '+inf',
                            'WITHSCORES', 'LIMIT', 0, 1)
    if #head > 0 and (opens == nil or tonumber(head[2]) < opens) then
        opens = tonumber(head[2])
    end
end
if opens == nil then return 'inf' end
return fmt(math.max(0, opens - NOW))
