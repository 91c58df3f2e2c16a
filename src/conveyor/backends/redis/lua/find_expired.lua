-- Running jobs whose lease ran out before now (the store's clock), oldest lease first, at
-- most ARGV[3]: their columns.
local ids = redis.call('ZRANGEBYSCORE', P .. ':running', '-inf', '(' .. fmt(NOW), 'LIMIT', 0,
                       tonumber(ARGV[3]))
local rows = {}
for _, id in ipairs(ids) do
    local row = job_row(id)
    if row then rows[#rows + 1] = row end
end
return rows
