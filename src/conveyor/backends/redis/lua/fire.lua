-- Deal with periodic entry ARGV[3]'s tick ARGV[4]: record it and store its job (the arguments
-- of enqueue_jobs from ARGV[6]; none for a tick skipped) in this one step — unless the tick was
-- recorded already, or the leader ARGV[5] ('' for none) no longer leads: then nothing. Returns
-- what enqueue_jobs returns, or false.
local name, tick = ARGV[3], ARGV[4]
if not leads(ARGV[5]) then return false end
if redis.call('ZADD', P .. ':ticks:' .. name, 'NX', tick, tick) == 0 then return false end
redis.call('SADD', P .. ':cron', name)
if ARGV[6] == '0' then return false end
local stored = enqueue_jobs(6)
if stored.err then  -- refused before it wrote anything: neither is the tick recorded
    redis.call('ZREM', P .. ':ticks:' .. name, tick)
    return stored
end
local made = stored[2][1]  -- its id, or {id, deduplicated, its columns}
if type(made) == 'table' then made = made[1] end
redis.call('ZADD', P .. ':fired:' .. name, tick, made)
return stored
