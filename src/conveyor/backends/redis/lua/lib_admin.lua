-- Helpers of the admin scripts (admin_*.lua): walking the id indexes newest first, the filters
-- of listing and bulk changes, cancelling, deleting, and the oldest queued job of a queue. No
-- keys of their own. Every name starts with `admin_`: the loader puts every library in front
-- of every script, and a local of the same name in another library would hide one of these.

local ADMIN_STATES = {'waiting', 'scheduled', 'queued', 'running', 'retrying', 'succeeded',
                      'dead', 'cancelled'}

-- Ids a script was given as text ("12,15"); nil for '' (any id).
local function admin_ids(text)
    if text == '' then return nil end
    local ids = {}
    for id in string.gmatch(text, '[^,]+') do ids[#ids + 1] = id end
    return ids
end

-- A filter as the admin scripts take it: JSON {states: [...], queue, task, error_type,
-- contains (lower case)}, every field optional; states becomes a set.
local function admin_filter(text)
    local f = cjson.decode(text)
    if f.states then
        local set = {}
        for _, s in ipairs(f.states) do set[s] = true end
        f.states = set
    end
    return f
end

-- The indexes (sorted sets of ids, scored by id) that hold every job a filter can match: its
-- states' indexes, or its queue's if that is smaller; every state's if it names neither.
local function admin_sources(f)
    local keys = {}
    if f.states then
        local total = 0
        for _, s in ipairs(ADMIN_STATES) do
            if f.states[s] then
                keys[#keys + 1] = P .. ':ix:' .. s
                total = total + redis.call('ZCARD', keys[#keys])
            end
        end
        if f.queue and redis.call('ZCARD', P .. ':ixq:' .. f.queue) < total then
            return {P .. ':ixq:' .. f.queue}
        end
        return keys
    end
    if f.queue then return {P .. ':ixq:' .. f.queue} end
    for _, s in ipairs(ADMIN_STATES) do keys[#keys + 1] = P .. ':ix:' .. s end
    return keys
end

-- Walk ids newest first, strictly between `above` and `below` (numbers, or nil: no bound):
-- the ids of the sorted sets `keys` merged, or (with `ids`, a list) those ids. Reads a page of
-- each set at a time. Returns a function giving the next id (text), nil at the end.
local function admin_walk(keys, ids, below, above, page)
    local low = above and ('(' .. above) or '-inf'
    local sources = {}
    if ids then
        local list = {}
        for _, id in ipairs(ids) do
            local n = tonumber(id)
            if (not below or n < below) and (not above or n > above) then
                list[#list + 1] = id
            end
        end
        table.sort(list, function(x, y) return tonumber(x) > tonumber(y) end)
        sources[1] = {buf = list, pos = 1, done = true}
    else
        for _, k in ipairs(keys) do
            sources[#sources + 1] = {key = k, buf = {}, pos = 1, done = false,
                                     high = below and ('(' .. below) or '+inf'}
        end
    end
    local function head(s)
        if s.pos > #s.buf then
            if s.done then return nil end
            s.buf = redis.call('ZREVRANGEBYSCORE', s.key, s.high, low, 'LIMIT', 0, page)
            s.pos = 1
            if #s.buf < page then s.done = true end
            if #s.buf == 0 then return nil end
            s.high = '(' .. s.buf[#s.buf]
        end
        return s.buf[s.pos]
    end
    return function()
        local best, from = nil, nil
        for _, s in ipairs(sources) do
            local id = head(s)
            if id and (not best or tonumber(id) > tonumber(best)) then best, from = id, s end
        end
        if from then from.pos = from.pos + 1 end
        return best
    end
end

-- The type of the last error in a job's `errors` (JSON), or nil.
local function admin_error_type(errors)
    if not errors or errors == '' or errors == '[]' then return nil end
    local ok, list = pcall(cjson.decode, errors)
    if not ok or type(list) ~= 'table' then return nil end
    local last = list[#list]
    if type(last) ~= 'table' or type(last.type) ~= 'string' then return nil end
    return last.type
end

local ADMIN_FIELDS = {'state', 'queue', 'task', 'unique_key', 'finished_at'}

-- The job's state, queue, task, unique_key and finished_at if it exists and matches the
-- filter; else nil.
local function admin_match(id, f)
    local jk = job_key(id)
    local h = redis.call('HMGET', jk, unpack(ADMIN_FIELDS))
    if not h[1] then return nil end
    if f.states and not f.states[h[1]] then return nil end
    if f.queue and h[2] ~= f.queue then return nil end
    if f.task and h[3] ~= f.task then return nil end
    if f.error_type and admin_error_type(redis.call('HGET', jk, 'errors')) ~= f.error_type then
        return nil
    end
    if f.contains then
        local a = redis.call('HMGET', jk, 'args', 'kwargs')
        -- string.lower and plain find: ASCII, ignoring case, like the SQL stores' lower/instr
        local text = string.lower(h[3] .. ' ' .. (a[1] or '') .. ' ' .. (a[2] or ''))
        if not string.find(text, f.contains, 1, true) then return nil end
    end
    return h
end

-- Cancel a job that has not started (its state is `state`): a waiting one first leaves the
-- dependents of what it waited for. Its own dependents follow (cancelled or released).
local function admin_cancel(id, state, at, note)
    if state == 'waiting' then
        local deps = P .. ':deps:' .. id
        for _, other in ipairs(redis.call('SMEMBERS', deps)) do
            redis.call('SREM', P .. ':dependents:' .. other, id)
        end
        redis.call('DEL', deps)
    end
    move(id, 'cancelled', at, note, {'finished_at', fmt(at)})
    finished(id, 'cancelled', at)
end

-- Delete a finished job and everything of its own: the hash, its history, its index entries,
-- its count, its unique key if it is the one holding it. `h` is what admin_match read.
local function admin_delete(id, h)
    local state, queue, unique_key = h[1], h[2], h[4]
    redis.call('DEL', job_key(id), P .. ':hist:' .. id, P .. ':dependents:' .. id,
               P .. ':deps:' .. id)
    redis.call('ZREM', P .. ':ix:' .. state, id)
    redis.call('ZREM', P .. ':ixq:' .. queue, id)
    redis.call('ZREM', P .. ':finished', id)
    local counts_field = state .. ':' .. queue
    if redis.call('HINCRBY', P .. ':counts', counts_field, -1) <= 0 then
        redis.call('HDEL', P .. ':counts', counts_field)
    end
    if unique_key and redis.call('GET', P .. ':uniq:' .. unique_key) == id then
        redis.call('DEL', P .. ':uniq:' .. unique_key)
    end
end

-- Since when (µs) the oldest queued job of a queue has been queued (its `changed`), or nil.
-- A lane orders its jobs by priority, then run_at; a job became queued at or after its
-- run_at, so within a priority the walk stops at the first run_at not before the best found:
-- usually one job a priority, never more than the lane.
local function admin_oldest_queued(queue)
    local best = nil
    for _, lane in ipairs(redis.call('SMEMBERS', P .. ':lanes:' .. queue)) do
        local i = 0
        while true do
            local chunk = redis.call('ZRANGE', lane, i, i + 99, 'WITHSCORES')
            if #chunk == 0 then break end
            local passed = nil
            for k = 1, #chunk, 2 do
                local member = chunk[k]
                if best and tonumber(string.sub(member, 1, 17)) >= best then
                    passed = chunk[k + 1]
                    break
                end
                local id = string.format('%d', tonumber(string.sub(member, 18)))
                local changed = num(redis.call('HGET', job_key(id), 'changed'))
                if changed then
                    local us = math.floor(changed * 1000000 + 0.5)
                    if not best or us < best then best = us end
                end
            end
            if passed then
                -- on to the next priority
                local nxt = redis.call('ZRANGEBYSCORE', lane, '(' .. passed, '+inf', 'LIMIT', 0, 1)
                if #nxt == 0 then break end
                i = redis.call('ZRANK', lane, nxt[1])
            else
                i = i + 100
            end
        end
    end
    return best
end
