-- A worker about to wait: unless something became runnable since it last looked (the
-- counter P:seq moved past ARGV[4]), register its token ARGV[3] to be signalled.
-- Returns {1 if registered else 0, the counter}.
local seq = redis.call('GET', P .. ':seq') or '0'
if ARGV[4] ~= '' and seq ~= ARGV[4] then return {0, seq} end
redis.call('SADD', P .. ':idle', ARGV[3])
redis.call('DEL', P .. ':wake:' .. ARGV[3])
return {1, seq}
