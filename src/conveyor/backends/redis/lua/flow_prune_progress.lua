-- Forget the progress reports made more than ARGV[3] seconds before now, and the state events
-- of the feed (P:events; each job's history keeps its own) as old, by their `at` (on a test
-- clock, stream ids and times differ). Entries are appended in time order, so the oldest go,
-- up to the first recent enough; at most FLOW_PRUNE_LOOK of each stream a call (the next
-- call carries on). Returns how many progress reports went.
local FLOW_PRUNE_LOOK = 20000
local cutoff = NOW - tonumber(ARGV[3])

local function trim(stream)
    local start = '-'
    local last = nil
    local looked = 0
    while looked < FLOW_PRUNE_LOOK do
        local batch = redis.call('XRANGE', stream, start, '+', 'COUNT', 500)
        for _, entry in ipairs(batch) do
            local fields = entry[2]
            local at = nil
            for i = 1, #fields, 2 do
                if fields[i] == 'at' then at = tonumber(fields[i + 1]) end
            end
            if at and at >= cutoff then
                -- the first to keep: everything before it goes
                return redis.call('XTRIM', stream, 'MINID', entry[1])
            end
            last = entry[1]
        end
        looked = looked + #batch
        if #batch < 500 then break end
        start = '(' .. last
    end
    if last == nil then return 0 end
    -- every entry looked at is old: up to and including the last of them
    local ms, seq = string.match(last, '^(%d+)-(%d+)$')
    return redis.call('XTRIM', stream, 'MINID',
                      ms .. '-' .. string.format('%d', tonumber(seq) + 1))
end

trim(P .. ':events')
return trim(P .. ':progress')
