-- Delete the finished jobs matching the filter ARGV[3] (JSON, see admin_filter; its states are
-- finished ones) that finished ARGV[7] seconds or more before now, with everything of theirs,
-- looking at no more than ARGV[6] jobs. With ids ARGV[4] ("12,15"), among those, newest first,
-- below ARGV[5] (an id; '' for no bound). Without ('' for any id), from the oldest finished
-- (P:finished), skipping the first ARGV[5] of them (those kept by the calls before). Returns
-- {how many, cursor}: where the caller goes on (an id; a count to skip), false when done.
local f = admin_filter(ARGV[3])
local budget = tonumber(ARGV[6])
local cutoff = NOW - tonumber(ARGV[7])
local count = 0

local function purged(id)
    local h = admin_match(id, f)
    if h and FINISHED[h[1]] and num(h[5]) and num(h[5]) <= cutoff then
        admin_delete(id, h)
        count = count + 1
        return true
    end
    return false
end

local ids = admin_ids(ARGV[4])
if ids then
    local next_id = admin_walk(nil, ids, tonumber(ARGV[5]), nil, math.min(budget, 128))
    local looked, last = 0, nil
    while looked < budget do
        local id = next_id()
        if not id then return {count, false} end
        looked = looked + 1
        last = id
        purged(id)
    end
    return {count, last}
end

local skip = tonumber(ARGV[5]) or 0
local oldest = redis.call('ZRANGE', P .. ':finished', skip, skip + budget - 1, 'WITHSCORES')
local kept = 0
for i = 1, #oldest, 2 do
    if tonumber(oldest[i + 1]) > cutoff then return {count, false} end
    if not purged(oldest[i]) then kept = kept + 1 end
end
if #oldest < 2 * budget then return {count, false} end
return {count, tostring(skip + kept)}
