-- Claim up to ARGV[5] queued jobs (and up to ARGV[6] more, of jobs without limits, to hold
-- ahead) for worker ARGV[3], from the queues ARGV[4] (JSON; '' for all), leased until ARGV[7];
-- the first ARGV[5] begin now. Due jobs are promoted first. Returns the jobs' columns, in claim
-- order (priority, run_at, id).
local worker = ARGV[3]
local queues = ARGV[4] ~= '' and cjson.decode(ARGV[4]) or all_queues()
local limit, ahead = tonumber(ARGV[5]), tonumber(ARGV[6])
local lease_until = fmt(tonumber(ARGV[7]) + SHIFT)
local paused = {}
for _, q in ipairs(redis.call('SMEMBERS', P .. ':paused')) do paused[q] = true end
local qlimit = {}
local flat = redis.call('HGETALL', P .. ':qlimit')
for i = 1, #flat, 2 do qlimit[flat[i]] = tonumber(flat[i + 1]) end

local candidates = {}
local queue_free = {}
local circuit_free = {}
local limited_seen = false
for _, q in ipairs(queues) do
    if not paused[q] then
        promote(q, NOW)
        local free = nil
        if qlimit[q] then
            free = qlimit[q] - (tonumber(redis.call('HGET', P .. ':counts', 'running:' .. q)) or 0)
            queue_free[q] = free
        end
        if free == nil or free > 0 then
            local lanes_key = P .. ':lanes:' .. q
            local prefix_len = #P + #(':lane:') + #q + 2
            for _, lane in ipairs(redis.call('SMEMBERS', lanes_key)) do
                local sig = string.sub(lane, prefix_len)
                local ck, rk, circuit = string.match(sig, '^([^\30]*)\30([^\30]*)\30(.*)$')
                local open = true
                if circuit ~= '' then
                    local c = redis.call('HMGET', P .. ':circuit:' .. circuit, 'state',
                                         'half_open_jobs')
                    if c[1] == 'open' then
                        open = false
                    elseif c[1] == 'half_open' then
                        local running = tonumber(redis.call('HGET', P .. ':crun', circuit)) or 0
                        circuit_free[circuit] = (tonumber(c[2]) or 1) - running
                        if circuit_free[circuit] <= 0 then open = false end
                    end
                end
                if open then
                    local limited = ck ~= '' or rk ~= '' or free ~= nil or
                        circuit_free[circuit] ~= nil
                    local wanted = limited and limit or limit + ahead
                    local heads = redis.call('ZRANGE', lane, 0, wanted - 1, 'WITHSCORES')
                    if #heads == 0 then
                        redis.call('SREM', lanes_key, lane)
                    end
                    for i = 1, #heads, 2 do
                        candidates[#candidates + 1] = {tonumber(heads[i + 1]), heads[i], q,
                            ck ~= '' and ck or nil, rk ~= '' and rk or nil,
                            circuit ~= '' and circuit or nil, limited}
                    end
                    if limited then limited_seen = true end
                end
            end
        end
    end
end

table.sort(candidates, function(x, y)
    if x[1] ~= y[1] then return x[1] < y[1] end
    return x[2] < y[2]
end)

local chosen = {}
local busy, spent = {}, {}
for _, c in ipairs(candidates) do
    if #chosen >= limit + ahead then break end
    local q, ck, rk, circuit, limited = c[3], c[4], c[5], c[6], c[7]
    local id = tostring(tonumber(string.sub(c[2], 18)))
    local take = true
    if limited then
        if #chosen >= limit then take = false end
        if take and queue_free[q] ~= nil and queue_free[q] <= 0 then take = false end
        if take and circuit and circuit_free[circuit] ~= nil and circuit_free[circuit] <= 0 then
            take = false
        end
        local f = nil
        if take and (ck or rk) then f = redis.call('HMGET', job_key(id), 'cm', 'rm') end
        if take and ck then
            if busy[ck] == nil then
                busy[ck] = tonumber(redis.call('HGET', P .. ':conc', ck)) or 0
            end
            if busy[ck] >= (tonumber(f[1]) or 0) then take = false end
        end
        if take and rk then
            if spent[rk] == nil then
                local rate = P .. ':rate:' .. rk
                redis.call('ZREMRANGEBYSCORE', rate, '-inf', NOW)
                spent[rk] = redis.call('ZCARD', rate)
            end
            if spent[rk] >= (tonumber(f[2]) or 0) then take = false end
        end
        if take then
            if queue_free[q] ~= nil then queue_free[q] = queue_free[q] - 1 end
            if circuit and circuit_free[circuit] ~= nil then
                circuit_free[circuit] = circuit_free[circuit] - 1
            end
            if ck then busy[ck] = busy[ck] + 1 end
            if rk then spent[rk] = spent[rk] + 1 end
        end
    end
    if take then chosen[#chosen + 1] = {id, rk} end
end

-- Each job is read once: its columns (JOB_COLUMNS, the row the claim returns), then the rest
-- of what `move` reads (CURRENT), then its rate period. `at[field]` is the field's place.
local read, at = {}, {}
for _, fields in ipairs({JOB_COLUMNS, CURRENT, {'rp'}}) do
    for _, field in ipairs(fields) do
        if not at[field] then
            read[#read + 1] = field
            at[field] = #read
        end
    end
end
local columns = #JOB_COLUMNS

local rows = {}
for i, c in ipairs(chosen) do
    local id, rk = c[1], c[2]
    local f = redis.call('HMGET', job_key(id), unpack(read))
    local current = {}
    for k, field in ipairs(CURRENT) do current[k] = f[at[field]] end
    local attempt = tostring(tonumber(f[at.attempt]) + 1)
    local started = false
    if i <= limit then started = fmt(math.max(NOW, tonumber(f[at.created_at]))) end
    local sets = {'attempt', attempt, 'worker_id', worker, 'lease_until', lease_until,
        'started_at', started}
    move(id, 'running', NOW, false, sets, nil, nil, current)
    if rk then
        redis.call('ZADD', P .. ':rate:' .. rk, NOW + tonumber(f[at.rp]),
                   id .. ':' .. f[at.attempt])
    end
    -- its columns as they are now: as read, but for what the move wrote (its state, `sets`)
    f[at.state] = 'running'
    for k = 1, #sets, 2 do f[at[sets[k]]] = sets[k + 1] end
    for k = #f, columns + 1, -1 do f[k] = nil end
    rows[#rows + 1] = f
end
return rows
