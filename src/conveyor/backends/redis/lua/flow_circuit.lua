-- Write circuit ARGV[3] as the caller decided it, only if it is still at version ARGV[4] (''
-- for a circuit the store does not have yet): the caller read it, then `circuit.transition`
-- decided. ARGV[5]: the fields, JSON {field: text or null (removed)}. ARGV[6]: the change to
-- log, JSON {name, at, event, reason, open_for} (times as text), or '' for none; its count of
-- held jobs is taken here. A change that is not an opening releases held jobs: idle workers
-- wake. Returns {1, held}; or, if the circuit changed meanwhile, {0, now, its fields (as
-- FLOW_CIRCUIT_FIELDS orders them), its version} to decide again on.
local name = ARGV[3]
local k = P .. ':circuit:' .. name
local version = redis.call('HGET', k, 'v')
if (version or '') ~= ARGV[4] then
    local found = redis.call('HMGET', k, unpack(FLOW_CIRCUIT_FIELDS))
    local out = {0, flow_now()}
    for i = 1, #FLOW_CIRCUIT_FIELDS do out[#out + 1] = found[i] end
    return out
end
local puts, dels = {}, {}
for field, value in pairs(cjson.decode(ARGV[5])) do
    if value == cjson.null then
        dels[#dels + 1] = field
    else
        puts[#puts + 1] = field
        puts[#puts + 1] = value
    end
end
if #puts > 0 then redis.call('HSET', k, unpack(puts)) end
if #dels > 0 then redis.call('HDEL', k, unpack(dels)) end
redis.call('HINCRBY', k, 'v', 1)
redis.call('SADD', P .. ':circuits', name)
if ARGV[6] == '' then return {1, 0} end
local change = cjson.decode(ARGV[6])
-- opening: the jobs failing now are held too; else: the jobs still to run
local held = flow_held(name)[name] or 0
if change.event == 'opened' then
    held = held + flow_running(name)
else
    wake()
end
change.held = held
local entry = cjson.encode(change)
for _, log in ipairs({P .. ':clog', P .. ':clog:' .. name}) do
    redis.call('LPUSH', log, entry)
    redis.call('LTRIM', log, 0, FLOW_LOG_KEPT - 1)
end
return {1, held}
