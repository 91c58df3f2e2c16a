-- Remove every key of the store (conveyor migrate --down-to 0), a batch at a time.
local cursor = '0'
repeat
    local found = redis.call('SCAN', cursor, 'MATCH', P .. ':*', 'COUNT', 1000)
    cursor = found[1]
    if #found[2] > 0 then redis.call('UNLINK', unpack(found[2])) end
until cursor == '0'
return 0
