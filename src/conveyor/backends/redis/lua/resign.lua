-- Give up leadership ARGV[3] if ARGV[4] holds it.
local k = P .. ':leader:' .. ARGV[3]
if redis.call('GET', k) == ARGV[4] then redis.call('DEL', k) end
return 0
