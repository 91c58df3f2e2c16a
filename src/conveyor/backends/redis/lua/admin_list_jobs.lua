-- List jobs, newest first: those matching the filter ARGV[3] (JSON, see admin_filter) among
-- the ids ARGV[4] ("12,15"; '' for any id: the indexes are walked), below ARGV[5] and above
-- ARGV[6] (ids; '' for no bound), at most ARGV[7], looking at no more than ARGV[8] jobs.
-- Returns {rows (job_row each), cursor}: the cursor is the last id looked at when the look
-- ran out before the list was full (the caller goes on below it); false when done.
local f = admin_filter(ARGV[3])
local ids = admin_ids(ARGV[4])
local limit, budget = tonumber(ARGV[7]), tonumber(ARGV[8])
local next_id = admin_walk(ids or admin_sources(f), ids, tonumber(ARGV[5]), tonumber(ARGV[6]),
                           math.max(16, math.min(limit, budget)))
local rows = {}
local looked, last = 0, nil
while #rows < limit do
    if looked >= budget then return {rows, last} end
    local id = next_id()
    if not id then break end
    looked = looked + 1
    last = id
    if admin_match(id, f) then rows[#rows + 1] = job_row(id) end
end
return {rows, false}
