-- Every circuit the store has seen, by name: {name, its fields (as FLOW_CIRCUIT_FIELDS orders
-- them, but the version; false: none), held}, held counting its jobs still to run and those
-- running.
local names = redis.call('SMEMBERS', P .. ':circuits')
table.sort(names)
local held = #names > 0 and flow_held(nil) or {}
local rows = {}
for _, name in ipairs(names) do
    local f = redis.call('HMGET', P .. ':circuit:' .. name, unpack(FLOW_CIRCUIT_FIELDS))
    local row = {name}
    for i = 1, #FLOW_CIRCUIT_FIELDS - 1 do row[#row + 1] = f[i] end
    row[#row + 1] = (held[name] or 0) + flow_running(name)
    rows[#rows + 1] = row
end
return rows
