-- Pause queue ARGV[3] (ARGV[4] '1') or resume it ('0'). Resuming wakes idle workers: the
-- queue's jobs may run again. Returns 1 if that changed anything.
local queue = ARGV[3]
if ARGV[4] == '1' then
    return redis.call('SADD', P .. ':paused', queue)
end
local changed = redis.call('SREM', P .. ':paused', queue)
if changed == 1 then wake() end
return changed
