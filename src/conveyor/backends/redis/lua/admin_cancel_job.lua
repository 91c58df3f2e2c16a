-- Cancel job ARGV[3] with the note ARGV[4]: at once if it has not started; if it runs, ask it
-- to stop (complete.lua ends it cancelled, with this note). A finished job stays as it is.
-- Returns its columns after, false if there is no such job.
local id, note = ARGV[3], ARGV[4]
local state = redis.call('HGET', job_key(id), 'state')
if not state then return false end
if state == 'running' then
    redis.call('HSET', job_key(id), 'cancel_requested', '1', 'cnote', note)
elseif not FINISHED[state] then
    admin_cancel(id, state, NOW, note)
end
return job_row(id)
