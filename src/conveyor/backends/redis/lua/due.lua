-- After a short claim, for the queues ARGV[3] (JSON; '' for all): promote what is due, and
-- return the seconds until the next scheduled or retrying job is due (as text; false: none;
-- zero when it promoted some: the next claim may find them).
local queues = ARGV[3] ~= '' and cjson.decode(ARGV[3]) or all_queues()
local next_at = nil
local promoted = 0
for _, q in ipairs(queues) do
    promoted = promoted + promote(q, NOW)
    local head = redis.call('ZRANGE', P .. ':due:' .. q, 0, 0, 'WITHSCORES')
    if #head > 0 and (next_at == nil or tonumber(head[2]) < next_at) then
        next_at = tonumber(head[2])
    end
end
if promoted > 0 then return '0' end
if next_at == nil then return false end
return fmt(next_at - NOW)
