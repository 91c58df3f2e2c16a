-- Jobs that finished at or after ARGV[3], per queue, state and ARGV[4]-second bucket: from the
-- ARGV[5]-th of them on ('' for the first), at most ARGV[6] jobs. Returns {rows, cursor}: each
-- row {queue, state, bucket start, how many}; the cursor is where the caller goes on (and
-- adds up), false when done.
local since, bucket = ARGV[3], tonumber(ARGV[4])
local skip = tonumber(ARGV[5]) or 0
local budget = tonumber(ARGV[6])
local first = redis.call('ZCOUNT', P .. ':finished', '-inf', '(' .. since)
local found = redis.call('ZRANGE', P .. ':finished', first + skip, first + skip + budget - 1,
                         'WITHSCORES')
local counts, rows = {}, {}
for i = 1, #found, 2 do
    local h = redis.call('HMGET', job_key(found[i]), 'queue', 'state')
    if h[1] and FINISHED[h[2]] then
        local start = fmt(math.floor(tonumber(found[i + 1]) / bucket) * bucket)
        local row_key = h[1] .. SEP .. h[2] .. SEP .. start
        local row = counts[row_key]
        if not row then
            row = {h[1], h[2], start, 0}
            counts[row_key] = row
            rows[#rows + 1] = row
        end
        row[4] = row[4] + 1
    end
end
if #found < 2 * budget then return {rows, false} end
return {rows, tostring(skip + budget)}
