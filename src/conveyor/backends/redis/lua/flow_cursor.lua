-- Where the event streams end now: the last id each has given out ('0-0': none yet), kept
-- however much of it was trimmed since. Returns {events id, progress id}.
local ends = {}
for i, name in ipairs({'events', 'progress'}) do
    local stream = P .. ':' .. name
    ends[i] = '0-0'
    if redis.call('EXISTS', stream) == 1 then
        local info = redis.call('XINFO', 'STREAM', stream)
        for j = 1, #info, 2 do
            if info[j] == 'last-generated-id' then ends[i] = info[j + 1] end
        end
    end
end
return ends
