-- Take the right to send alert ARGV[3]: 1 unless it was sent within ARGV[4] seconds before
-- now (it is then recorded as sent now).
local alerts, name = P .. ':alerts', ARGV[3]
local sent = tonumber(redis.call('HGET', alerts, name))
if sent ~= nil and sent > NOW - tonumber(ARGV[4]) then return 0 end
redis.call('HSET', alerts, name, flow_now())
return 1
