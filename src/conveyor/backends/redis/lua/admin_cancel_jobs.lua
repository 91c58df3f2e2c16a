-- Cancel the jobs matching the filter ARGV[3] (JSON, see admin_filter; its states are all
-- not started yet) among the ids ARGV[4] ("12,15"; '' for any id), newest first, below ARGV[5]
-- (an id; '' for no bound), looking at no more than ARGV[6] jobs; the note ARGV[7]. Returns
-- {how many, cursor}: the cursor is the last id looked at when the look ran out (the caller
-- goes on below it); false when done.
local f = admin_filter(ARGV[3])
local ids = admin_ids(ARGV[4])
local budget, note = tonumber(ARGV[6]), ARGV[7]
local next_id = admin_walk(ids or admin_sources(f), ids, tonumber(ARGV[5]), nil,
                           math.min(budget, 128))
local count, looked, last = 0, 0, nil
while looked < budget do
    local id = next_id()
    if not id then return {count, false} end
    looked = looked + 1
    last = id
    -- read now, not when the walk began: cancelling one job may have cancelled others
    local h = admin_match(id, f)
    if h then
        admin_cancel(id, h[1], NOW, note)
        count = count + 1
    end
end
return {count, last}
