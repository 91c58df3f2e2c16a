-- The jobs among ARGV[3] ("12,15") with a state change in their history whose note begins
-- with ARGV[4]. Returns their ids.
local prefix = ARGV[4]
local found = {}
for id in string.gmatch(ARGV[3], '[^,]+') do
    for _, entry in ipairs(redis.call('LRANGE', P .. ':hist:' .. id, 0, -1)) do
        local note = cjson.decode(entry)[5]
        if type(note) == 'string' and string.sub(note, 1, #prefix) == prefix then
            found[#found + 1] = tonumber(id)
            break
        end
    end
end
return found
