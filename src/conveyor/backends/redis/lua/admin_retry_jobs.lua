-- Put the jobs matching the filter ARGV[3] (JSON, see admin_filter; its states are dead or
-- cancelled) among the ids ARGV[4] ("12,15"; '' for any id) back in their queues, attempts
-- starting again: newest first, below ARGV[5] (an id; '' for no bound), looking at no more than
-- ARGV[6] jobs; the note ARGV[7]. A job with a unique key comes back only if no unfinished job
-- holds the key: newest first, the first of a key to come back holds it, and the older ones
-- with that key stay. Returns {their ids, cursor}: the cursor is the last id looked at when the
-- look ran out (the caller goes on below it); false when done.
local f = admin_filter(ARGV[3])
local ids = admin_ids(ARGV[4])
local budget, note = tonumber(ARGV[6]), ARGV[7]
local next_id = admin_walk(ids or admin_sources(f), ids, tonumber(ARGV[5]), nil,
                           math.min(budget, 128))
local retried, looked, last = {}, 0, nil
local at = fmt(NOW)
while looked < budget do
    local id = next_id()
    if not id then return {retried, false} end
    looked = looked + 1
    last = id
    local h = admin_match(id, f)
    local unique_key = h and h[4]
    if h and unique_key then
        local holder = redis.call('GET', P .. ':uniq:' .. unique_key)
        if holder and UNFINISHED[redis.call('HGET', job_key(holder), 'state')] then h = nil end
    end
    if h then
        move(id, 'queued', NOW, note, {'attempt', '0', 'run_at', at, 'started_at', false,
            'finished_at', false, 'lease_until', false, 'worker_id', false,
            'cancel_requested', false, 'cnote', false, 'progress', false, 'stage', false,
            'result', false})
        if unique_key then redis.call('SET', P .. ':uniq:' .. unique_key, id) end
        retried[#retried + 1] = tonumber(id)
    end
end
return {retried, last}
