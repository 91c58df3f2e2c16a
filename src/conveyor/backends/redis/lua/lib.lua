-- The helpers the scripts share (the loader puts, in front of each script, the part of this
-- file and of lib_*.lua that it runs).
--
-- KEYS[1] is the prefix, `{name}`: every key is built from it, so every key of a store lives
-- in one hash slot (Redis Cluster runs each script on the one node holding it). ARGV[1] says
-- whose clock is "now": '1' the server's (TIME), '0' the caller's, ARGV[2].
--
-- A job is a hash (`P:job:<id>`, a field per column of conveyor.job.JOB_COLUMNS, and a few of
-- its own: `lm`, its member in its lane while queued; `ck`, `cm`, `rk`, `rm`, `rp`, its
-- limits; `odf`, what it does when a dependency fails; `depth`; `changed`, when its state last
-- changed; `entered`, the state it was stored in, its history's first entry; P:hist:<id> lists
-- the rest). Where it is depends on its state, and `move` is the one place that moves it:
--   waiting            P:deps:<id> (the unfinished jobs it waits for)
--   scheduled/retrying P:due:<queue>, scored by run_at
--   queued             its lane, P:lane:<queue>:<ck>\30<rk>\30<circuit>, scored by priority,
--                      member `%017d%016d` of run_at (µs) and id: claim order
--   running            P:running, scored by lease_until; P:wr:<worker>; counted per
--                      concurrency key (P:conc) and circuit (P:crun)
--   finished           P:finished, scored by finished_at
-- and, whatever the state, P:ix:<state> and P:ixq:<queue> (ids, scored by id) index it for
-- listing, P:counts keeps `<state>:<queue>` counts, and P:cheld counts the jobs still to run
-- (scheduled, queued, retrying) behind each circuit.

local P = KEYS[1]
local SERVER_TIME = ARGV[1] == '1'
local CALLER_NOW = tonumber(ARGV[2])
local NOW
if SERVER_TIME then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
    NOW = CALLER_NOW
end
-- a time the caller worked out from its own clock, on the store's clock
local SHIFT = NOW - CALLER_NOW

local SEP = '\30'
local FINISHED = {succeeded = true, dead = true, cancelled = true}
-- still to run: a job behind an open circuit waits in one of these
local TO_RUN = {scheduled = true, queued = true, retrying = true}
local UNFINISHED = {waiting = true, scheduled = true, queued = true, running = true,
                    retrying = true}
local WOKE = false

local function key(...)
    return P .. ':' .. table.concat({...}, ':')
end

local function job_key(id)
    return P .. ':job:' .. id
end

local function num(text)
    -- a time or number as stored (full precision: never through cjson)
    if text == false or text == nil then return nil end
    return tonumber(text)
end

-- (the last one kept: a call storing many jobs formats the same few times again and again)
local fmt_t, fmt_s = nil, nil
local function fmt(t)
    if t ~= fmt_t then
        fmt_t, fmt_s = t, string.format('%.6f', t)
    end
    return fmt_s
end

-- A queued job's member in its lane, from its run_at as stored: `%017d%016d` of run_at (µs)
-- and id. (The run_at part of the last one is kept: a call storing many jobs gives most of them
-- the same time.)
local member_at, member_head = nil, nil
local ZEROS = '0000000000000000'
local function lane_member(run_at, id)
    if run_at ~= member_at then
        local us = math.floor(tonumber(run_at) * 1000000 + 0.5)
        member_at, member_head = run_at, string.format('%017d', us)
    end
    return member_head .. string.sub(ZEROS, #id + 1) .. id
end

local LANES = {}  -- a queue's lane for jobs with no limit key or circuit, made once a call
local function lane_of(queue, ck, rk, circuit)
    if not (ck or rk or circuit) then
        local lane = LANES[queue]
        if not lane then
            lane = P .. ':lane:' .. queue .. ':' .. SEP .. SEP
            LANES[queue] = lane
        end
        return lane
    end
    return P .. ':lane:' .. queue .. ':' .. (ck or '') .. SEP .. (rk or '') .. SEP ..
        (circuit or '')
end

-- Idle workers block on a list of their own; a change that makes a job runnable (or due
-- sooner than they know) signals each
-- of them once (and forgets them): never a message per job.
local function wake()
    if WOKE then return end
    WOKE = true
    redis.call('INCR', P .. ':seq')
    local idle = redis.call('SMEMBERS', P .. ':idle')
    for _, token in ipairs(idle) do
        local list = P .. ':wake:' .. token
        redis.call('RPUSH', list, '1')
        redis.call('EXPIRE', list, 300)
    end
    if #idle > 0 then redis.call('DEL', P .. ':idle') end
end

local function count(state, queue, by)
    redis.call('HINCRBY', P .. ':counts', state .. ':' .. queue, by)
end

-- The history of a job and the event stream: every state change, nothing else. The first
-- entry, the state a job was stored in, is its hash's `entered` (at `created_at`): a job stored
-- writes no list.
local function record(id, at, from, to, worker, note, queue, task)
    if from then
        redis.call('RPUSH', P .. ':hist:' .. id, cjson.encode({fmt(at), from, to,
                   worker or cjson.null, note or cjson.null}))
    end
    redis.call('XADD', P .. ':events', '*', 'j', id, 'at', fmt(at), 'f', from or '', 't', to,
               'w', worker or '', 'n', note or '', 'q', queue, 'k', task)
end

-- Writes gathered while a script goes through many jobs, sent once each at the end: members
-- of sorted sets (a ZADD per set, a thousand members a call), counts (a HINCRBY per field),
-- the queues seen and their lanes (SADD).
local function writes()
    local zsets, zorder, counts, corder, lanes, queues = {}, {}, {}, {}, {}, {}
    local batch = {}
    function batch.zadd(k, score, member)
        local list = zsets[k]
        if not list then
            list = {}
            zsets[k] = list
            zorder[#zorder + 1] = k
        end
        list[#list + 1] = score
        list[#list + 1] = member
    end
    function batch.incr(k, field)
        local fields = counts[k]
        if not fields then
            fields = {}
            counts[k] = fields
        end
        local c = fields[field]
        if not c then
            c = {k, field, 0}
            fields[field] = c
            corder[#corder + 1] = c
        end
        c[3] = c[3] + 1
    end
    function batch.queue(queue)
        queues[queue] = true
    end
    function batch.lane(queue, lane)
        lanes[queue] = lanes[queue] or {}
        lanes[queue][lane] = true
    end
    function batch.flush()
        for _, k in ipairs(zorder) do
            local list = zsets[k]
            for start = 1, #list, 2000 do
                redis.call('ZADD', k, unpack(list, start, math.min(start + 1999, #list)))
            end
        end
        for _, c in ipairs(corder) do redis.call('HINCRBY', c[1], c[2], c[3]) end
        for queue, _ in pairs(queues) do redis.call('SADD', P .. ':queues', queue) end
        for queue, set in pairs(lanes) do
            for lane, _ in pairs(set) do redis.call('SADD', P .. ':lanes:' .. queue, lane) end
        end
    end
    return batch
end

-- The same, written at once: what `move` writes through unless its caller gathers them.
local DIRECT = {}
function DIRECT.zadd(k, score, member) redis.call('ZADD', k, score, member) end
function DIRECT.incr(k, field) redis.call('HINCRBY', k, field, 1) end
function DIRECT.queue(queue) redis.call('SADD', P .. ':queues', queue) end
function DIRECT.lane(queue, lane) redis.call('SADD', P .. ':lanes:' .. queue, lane) end
function DIRECT.flush() end

-- What `move` reads of a job, in one call: where it is, and where it goes. (A caller that
-- reads the job anyway reads these first, in this order, and hands `move` what it read.)
local CURRENT = {'state', 'queue', 'lm', 'worker_id', 'ck', 'circuit', 'task', 'rk', 'run_at',
                 'priority', 'lease_until', 'finished_at'}

-- Leave the structure of the old state and enter the new one's. `sets` is a flat list of
-- field, value pairs written with the state (value false: the field is removed). With `new_job`,
-- the job is not stored yet, `sets` are all its fields, and `new_job` maps those read here
-- (queue, task, ck, rk, circuit, run_at, priority) to their values. What it enters goes
-- through `w` (`writes()`, gathered for a whole enqueue call; DIRECT by default). `read`: the
-- job's CURRENT fields as its caller just read them, if it did.
local function move(id, to, at, note, sets, w, new_job, read)
    w = w or DIRECT
    local jk = job_key(id)
    local from, queue, lm, old_worker, ck, circuit, task, old_rk, new, puts
    local dels  -- the fields removed (none from a new job)
    if new_job then
        -- every field is given, none removed: they are written as they are, with the state
        new = new_job
        from, queue, lm, old_worker = false, new.queue, false, false
        ck, circuit, task = new.ck, new.circuit, new.task
        puts = sets
        puts[#puts + 1] = 'state'
        puts[#puts + 1] = to
        puts[#puts + 1] = 'changed'
        puts[#puts + 1] = fmt(at)
        puts[#puts + 1] = 'entered'
        puts[#puts + 1] = to
    else
        dels = {}
        local cur = read or redis.call('HMGET', jk, unpack(CURRENT))
        from, queue, lm, old_worker, ck, circuit, task = cur[1], cur[2], cur[3], cur[4],
            cur[5] or nil, cur[6] or nil, cur[7]
        old_rk = cur[8] or nil
        -- the fields as they will be
        new = {worker_id = cur[4], rk = cur[8], run_at = cur[9], priority = cur[10],
               lease_until = cur[11], finished_at = cur[12]}
        puts = {'state', to, 'changed', fmt(at)}
        for i = 1, #(sets or {}), 2 do
            local field, value = sets[i], sets[i + 1]
            if value == false then
                dels[#dels + 1] = field
            else
                puts[#puts + 1] = field
                puts[#puts + 1] = value
            end
            new[field] = value
        end
    end
    -- leave
    if from == 'queued' then
        redis.call('ZREM', lane_of(queue, ck, old_rk, circuit), lm)
        dels[#dels + 1] = 'lm'
    elseif from == 'scheduled' or from == 'retrying' then
        redis.call('ZREM', P .. ':due:' .. queue, id)
    elseif from == 'running' then
        redis.call('ZREM', P .. ':running', id)
        if old_worker then redis.call('SREM', P .. ':wr:' .. old_worker, id) end
        -- a bucket with nothing running goes (there may be a bucket per tenant)
        if ck and redis.call('HINCRBY', P .. ':conc', ck, -1) <= 0 then
            redis.call('HDEL', P .. ':conc', ck)
        end
        if circuit and redis.call('HINCRBY', P .. ':crun', circuit, -1) <= 0 then
            redis.call('HDEL', P .. ':crun', circuit)
        end
    elseif FINISHED[from] then
        redis.call('ZREM', P .. ':finished', id)
    end
    if from then
        redis.call('ZREM', P .. ':ix:' .. from, id)
        count(from, queue, -1)
    end
    -- the jobs still to run behind each circuit, counted (what it holds while open)
    if circuit and TO_RUN[from] ~= TO_RUN[to] then
        if TO_RUN[to] then
            w.incr(P .. ':cheld', circuit)
        elseif redis.call('HINCRBY', P .. ':cheld', circuit, -1) <= 0 then
            redis.call('HDEL', P .. ':cheld', circuit)
        end
    end
    -- enter
    if to == 'queued' then
        local member = lane_member(new.run_at, id)
        local lane = lane_of(queue, ck, new.rk or nil, circuit)
        w.zadd(lane, new.priority, member)
        w.lane(queue, lane)
        puts[#puts + 1] = 'lm'
        puts[#puts + 1] = member
        wake()
    elseif to == 'scheduled' or to == 'retrying' then
        w.zadd(P .. ':due:' .. queue, new.run_at, id)
        wake()  -- idle workers wait until the next job is due: this one may be sooner
    elseif to == 'running' then
        redis.call('ZADD', P .. ':running', tonumber(new.lease_until), id)
        redis.call('SADD', P .. ':wr:' .. new.worker_id, id)
        if ck then redis.call('HINCRBY', P .. ':conc', ck, 1) end
        if circuit then redis.call('HINCRBY', P .. ':crun', circuit, 1) end
    elseif FINISHED[to] then
        redis.call('ZADD', P .. ':finished', tonumber(new.finished_at) or at, id)
    end
    -- write
    redis.call('HSET', jk, unpack(puts))
    if dels and #dels > 0 then redis.call('HDEL', jk, unpack(dels)) end
    w.zadd(P .. ':ix:' .. to, id, id)
    w.incr(P .. ':counts', to .. ':' .. queue)
    record(id, at, from or nil, to, new.worker_id or nil, note, queue, task)
    return from
end

-- Whether the leader `holder` still leads (under any name): a rescue or a cron record it
-- decided applies only then.
local function leads(holder)
    if not holder or holder == '' then return true end
    for _, name in ipairs(redis.call('SMEMBERS', P .. ':leadership')) do
        if redis.call('GET', P .. ':leader:' .. name) == holder then return true end
    end
    return false
end

-- A job that finished releases, cancels or lets run its dependents, on down the chain.
local function settle_dependents(first_id, first_state, at)
    local todo = {{first_id, first_state}}
    local i = 1
    while i <= #todo do
        local id, state = todo[i][1], todo[i][2]
        i = i + 1
        local dependents_key = P .. ':dependents:' .. id
        local waiting = redis.call('SMEMBERS', dependents_key)
        if #waiting > 0 then redis.call('DEL', dependents_key) end
        for _, d in ipairs(waiting) do
            local jk = job_key(d)
            local f = redis.call('HMGET', jk, 'state', 'odf', 'run_at')
            if f[1] == 'waiting' then
                local deps = P .. ':deps:' .. d
                redis.call('SREM', deps, id)
                if state ~= 'succeeded' and not f[2] then
                    local note = 'dependency ' .. id .. ' is ' .. state
                    -- what it still waits for no longer counts it among their dependents
                    for _, other in ipairs(redis.call('SMEMBERS', deps)) do
                        redis.call('SREM', P .. ':dependents:' .. other, d)
                    end
                    redis.call('DEL', deps)
                    move(d, 'cancelled', at, note, {'finished_at', fmt(at)})
                    todo[#todo + 1] = {d, 'cancelled'}
                elseif redis.call('SCARD', deps) == 0 then
                    local to = tonumber(f[3]) > at and 'scheduled' or 'queued'
                    move(d, to, at, false, nil)
                end
            end
        end
    end
end

-- After a job reached `to`: its dependents, if it finished.
local function finished(id, to, at)
    if FINISHED[to] then settle_dependents(id, to, at) end
end

local JOB_COLUMNS = {'id', 'queue', 'task', 'args', 'kwargs', 'priority', 'state', 'attempt',
    'max_attempts', 'run_at', 'created_at', 'started_at', 'finished_at', 'lease_until',
    'worker_id', 'progress', 'stage', 'result', 'errors', 'meta', 'cancel_requested',
    'unique_key', 'circuit'}

-- A job's columns, as conveyor.job.JOB_COLUMNS orders them (false: absent); false if no job.
local function job_row(id)
    local row = redis.call('HMGET', job_key(id), unpack(JOB_COLUMNS))
    if not row[1] then return false end
    return row
end

-- Promote the due scheduled and retrying jobs of a queue.
local function promote(queue, at)
    local due = redis.call('ZRANGEBYSCORE', P .. ':due:' .. queue, '-inf', at, 'LIMIT', 0, 1000)
    for _, id in ipairs(due) do
        move(id, 'queued', at, false, {'worker_id', false})
    end
    return #due
end

local function all_queues()
    return redis.call('SMEMBERS', P .. ':queues')
end

-- The fields of a job stored only when given: field, and its place among the job's arguments.
local OPTIONAL = {'unique_key', 10, 'odf', 12, 'ck', 13, 'cm', 14, 'rk', 15, 'rm', 16, 'rp', 17,
                  'circuit', 18}

local function nonempty(text)
    if text == '' then return nil end
    return text
end

-- Store jobs, all or none: the arguments begin at ARGV[base] (see enqueue.lua). Returns NOW
-- and, per job, its id or, for a job deduplicated or waiting, {id, deduplicated, its columns}.
local function enqueue_jobs(base)
    local n = tonumber(ARGV[base])
    local W = 19
    local depth_base = base + n * W

    -- Nothing is written before everything named is checked.
    local missing = {}
    for i = 0, n - 1 do
        local deps = ARGV[base + i * W + 19]
        if deps ~= '' then
            for dep in string.gmatch(deps, '[^,]+') do
                if string.sub(dep, 1, 1) ~= '#' and redis.call('EXISTS', job_key(dep)) == 0 then
                    missing[#missing + 1] = dep
                end
            end
        end
    end
    if #missing > 0 then
        return redis.error_reply('conveyor:missing:' .. table.concat(missing, ','))
    end

    local out = {}
    local ids = {}
    local batch = n > 1 and writes() or DIRECT  -- (one job has nothing to gather)
    local first = redis.call('INCRBY', P .. ':next_id', n) - n
    for i = 0, n - 1 do
        local a = base + i * W
        local queue, unique_key = ARGV[a + 1], ARGV[a + 10]
        local created_at, run_at = tonumber(ARGV[a + 9]), tonumber(ARGV[a + 8])
        if SERVER_TIME then
            run_at = NOW + (run_at - created_at)
            created_at = NOW
        end
        local holder = nil
        if unique_key ~= '' then
            local held = redis.call('GET', P .. ':uniq:' .. unique_key)
            if held then
                local f = redis.call('HMGET', job_key(held), 'state', 'finished_at')
                if f[1] and (UNFINISHED[f[1]] or (ARGV[a + 11] ~= '' and
                        tonumber(f[2]) >= tonumber(ARGV[a + 11]) + SHIFT)) then
                    holder = held
                end
            end
        end
        if holder then
            ids[i] = holder
            out[#out + 1] = {tonumber(holder), 1, job_row(holder)}
        else
            local id = tostring(first + i + 1)
            ids[i] = id
            local fields = {'id', id, 'queue', queue, 'task', ARGV[a + 2], 'args', ARGV[a + 3],
                'kwargs', ARGV[a + 4], 'meta', ARGV[a + 5], 'priority', ARGV[a + 6],
                'max_attempts', ARGV[a + 7], 'attempt', '0', 'run_at', fmt(run_at),
                'created_at', fmt(created_at)}
            for j = 1, #OPTIONAL, 2 do
                local value = ARGV[a + OPTIONAL[j + 1]]
                if value ~= '' then
                    fields[#fields + 1] = OPTIONAL[j]
                    fields[#fields + 1] = value
                end
            end
            local new = {queue = queue, task = ARGV[a + 2], ck = nonempty(ARGV[a + 13]),
                rk = nonempty(ARGV[a + 15]), circuit = nonempty(ARGV[a + 18]),
                run_at = fields[20], priority = ARGV[a + 6]}
            local depth = ARGV[depth_base + i + 1]
            if depth ~= '0' then
                fields[#fields + 1] = 'depth'
                fields[#fields + 1] = depth
            end
            local deps = ARGV[a + 19]
            batch.queue(queue)
            batch.zadd(P .. ':ixq:' .. queue, id, id)
            if unique_key ~= '' then redis.call('SET', P .. ':uniq:' .. unique_key, id) end
            if deps == '' then
                -- its sorted sets, counts and sets gathered for the whole call (`batch`)
                local state = run_at > created_at and 'scheduled' or 'queued'
                move(id, state, created_at, false, fields, batch, new)
                out[#out + 1] = first + i + 1
            else
                -- written at once: what it waits for may settle it in this same call
                move(id, 'waiting', created_at, false, fields, DIRECT, new)
                local failed = nil
                local odf = ARGV[a + 12]
                local wait_key = P .. ':deps:' .. id
                for dep in string.gmatch(deps, '[^,]+') do
                    if string.sub(dep, 1, 1) == '#' then dep = ids[tonumber(string.sub(dep, 2))] end
                    local state = redis.call('HGET', job_key(dep), 'state')
                    if not FINISHED[state] then
                        redis.call('SADD', wait_key, dep)
                        redis.call('SADD', P .. ':dependents:' .. dep, id)
                    elseif state ~= 'succeeded' and odf == '' then
                        if not failed or tonumber(dep) < tonumber(failed[1]) then
                            failed = {dep, state}
                        end
                    end
                end
                if failed then
                    for _, other in ipairs(redis.call('SMEMBERS', wait_key)) do
                        redis.call('SREM', P .. ':dependents:' .. other, id)
                    end
                    redis.call('DEL', wait_key)
                    move(id, 'cancelled', created_at, 'dependency ' .. failed[1] .. ' is ' ..
                         failed[2], {'finished_at', fmt(created_at)})
                elseif redis.call('SCARD', wait_key) == 0 then
                    move(id, run_at > created_at and 'scheduled' or 'queued', created_at, false, nil)
                end
                out[#out + 1] = {tonumber(id), 0, job_row(id)}
            end
        end
    end
    batch.flush()
    return {fmt(NOW), out}
end
