-- The dead jobs matching the filter ARGV[3] (JSON, see admin_filter: dead, maybe a queue)
-- counted by task and type of their last error: newest first, below ARGV[4] (an id; '' for no
-- bound), looking at no more than ARGV[5] jobs. Returns {groups, cursor}: each group {task,
-- error type or false, how many, newest id, newest finished_at}; the cursor is the last id
-- looked at when the look ran out (the caller goes on below it and adds up), false when done.
local f = admin_filter(ARGV[3])
local budget = tonumber(ARGV[5])
local next_id = admin_walk(admin_sources(f), nil, tonumber(ARGV[4]), nil, budget)
local groups, order = {}, {}
local looked, last = 0, nil
local done = false
while looked < budget do
    local id = next_id()
    if not id then
        done = true
        break
    end
    looked = looked + 1
    last = id
    local h = admin_match(id, f)
    if h and h[5] then
        local kind = admin_error_type(redis.call('HGET', job_key(id), 'errors'))
        local group_key = h[3] .. SEP .. (kind and ('=' .. kind) or '')
        local g = groups[group_key]
        if not g then
            g = {h[3], kind or false, 0, id, h[5]}
            groups[group_key] = g
            order[#order + 1] = g
        end
        g[3] = g[3] + 1
        -- newest first: the first id seen is the group's newest; its newest finish may not be
        if tonumber(h[5]) > tonumber(g[5]) then g[5] = h[5] end
    end
end
return {order, not done and last or false}
