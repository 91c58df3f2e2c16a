-- Write outcomes (ARGV[3], JSON: arrays as `base.outcome_array` makes them) and starts (ARGV[4],
-- JSON: [id, worker_id, attempt, at, ago]), each only while that very attempt still runs
-- under that worker. Returns the ids of the jobs whose outcome applied.
local function given(v)
    if v == cjson.null then return nil end
    return v
end

local starts = cjson.decode(ARGV[4])
for _, s in ipairs(starts) do
    local jk = job_key(s[1])
    local f = redis.call('HMGET', jk, 'state', 'worker_id', 'attempt', 'started_at', 'created_at')
    if f[1] == 'running' and f[2] == s[2] and tonumber(f[3]) == s[3] and not f[4] then
        -- when it began, on the caller's clock, taken to the server's as an outcome's time is
        -- (however long the start waited to be sent); never after now, nor before its creation
        local began = s[4] - s[5]
        if SERVER_TIME then began = math.min(NOW, began + SHIFT) end
        redis.call('HSET', jk, 'started_at', fmt(math.max(began, tonumber(f[5]))))
    end
end

local applied = {}
for _, o in ipairs(cjson.decode(ARGV[3])) do
    local id, worker, attempt, state = tostring(o[1]), o[2], o[3], o[4]
    local result, err, run_at, refund = given(o[5]), given(o[6]), given(o[7]), o[8]
    local keeps_cancel, keeps_note = o[11], o[12]
    local at, note, expired, leader, ran_for = o[13], given(o[14]), given(o[15]), given(o[16]),
        given(o[17])
    local jk = job_key(id)
    local f = redis.call('HMGET', jk, 'state', 'worker_id', 'attempt', 'lease_until', 'errors',
                         'cancel_requested', 'cnote', 'started_at', 'created_at', 'changed')
    if f[1] == 'running' and f[2] == worker and tonumber(f[3]) == attempt
            and (expired == nil or tonumber(f[4]) < expired) and leads(leader) then
        local caller_at = at
        if SERVER_TIME then
            -- the outcome's time on the server's clock: it may have waited in the worker's
            -- batch (or out an outage) before this write; never after now, nor before the claim
            at = math.max(math.min(NOW, at + SHIFT), tonumber(f[10]) or 0)
        end
        local cancel_requested = f[6] == '1'
        local sets = {'lease_until', false}
        sets[#sets + 1] = 'result'
        sets[#sets + 1] = result or false
        if err then
            local errors = f[5]
            if not errors or errors == '[]' then
                errors = '[' .. err .. ']'
            else
                errors = string.sub(errors, 1, -2) .. ',' .. err .. ']'
            end
            sets[#sets + 1] = 'errors'
            sets[#sets + 1] = errors
        end
        if run_at then
            sets[#sets + 1] = 'run_at'
            sets[#sets + 1] = fmt(at + math.max(0, run_at - caller_at))
        end
        sets[#sets + 1] = 'attempt'
        sets[#sets + 1] = tostring(tonumber(f[3]) - refund)
        sets[#sets + 1] = 'finished_at'
        sets[#sets + 1] = FINISHED[state] and fmt(at) or false
        if given(o[10]) then
            sets[#sets + 1] = 'progress'
            sets[#sets + 1] = tostring(o[10])
        end
        if not (keeps_cancel and cancel_requested) then
            sets[#sets + 1] = 'cancel_requested'
            sets[#sets + 1] = false
        end
        if ran_for then
            sets[#sets + 1] = 'started_at'
            sets[#sets + 1] = fmt(math.max(at - ran_for, tonumber(f[9])))
        end
        if keeps_note and cancel_requested and f[7] then note = f[7] end
        move(id, state, at, note, sets)
        if keeps_cancel and cancel_requested then
            move(id, 'cancelled', at, 'cancelled',
                 {'finished_at', fmt(at), 'cancel_requested', false})
            state = 'cancelled'
        end
        finished(id, state, at)
        applied[#applied + 1] = tonumber(id)
    end
end
return applied
