-- Take or keep leadership ARGV[3] for holder ARGV[4] for ARGV[5] seconds, on the store's clock:
-- 1 if the holder has it.
local name, holder = ARGV[3], ARGV[4]
local ms = math.max(1, math.floor(tonumber(ARGV[5]) * 1000))
local k = P .. ':leader:' .. name
local current = redis.call('GET', k)
redis.call('SADD', P .. ':leadership', name)
if current == false then
    redis.call('SET', k, holder, 'PX', ms)
    return 1
elseif current == holder then
    redis.call('PEXPIRE', k, ms)
    return 1
end
return 0
