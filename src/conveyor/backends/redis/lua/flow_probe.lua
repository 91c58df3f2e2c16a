-- Record that circuit ARGV[3] was probed now (if the store has it).
local k = P .. ':circuit:' .. ARGV[3]
if redis.call('EXISTS', k) == 1 then
    redis.call('HSET', k, 'probed_at', flow_now())
    redis.call('HINCRBY', k, 'v', 1)
end
return 0
