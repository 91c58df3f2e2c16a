-- Flow control, events, cron, alerts and sessions: the keys the flow_*.lua scripts keep.
--   P:progress          stream of progress reports (fields j, at, p, w, q, k = job id, at,
--                       progress, worker, queue, task; s and m = stage and message, only when
--                       given)
--   P:circuits          set of every circuit seen (a failure was reported behind it)
--   P:circuit:<name>    hash: state, failures, half_open_jobs, opened_at, reason, probed_at
--                       (the last three absent when None), v = version, bumped by every write
--   P:clog, P:clog:<n>  capped lists of circuit changes (all, and one circuit's), newest first:
--                       JSON {name, at, event, reason, held, open_for}, times as text
--   P:alerts            hash alert key -> when it was last sent
--   P:revoked           zset of revoked dashboard sessions, scored by when they expire
--   P:cron              set of the periodic entries seen
--   P:ticks:<name>      zset of the entry's ticks dealt with (member: the tick as the caller
--                       wrote it; score: the tick)
--   P:fired:<name>      zset of the jobs its ticks stored, scored by tick

-- A circuit's fields, as flow.py reads them (`v`: its version).
local FLOW_CIRCUIT_FIELDS = {'state', 'failures', 'half_open_jobs', 'opened_at', 'reason',
    'probed_at', 'v'}
-- How many circuit changes each log list keeps.
local FLOW_LOG_KEPT = 1000
-- "now" as text, full precision: the store's clock, or the caller's as the caller wrote it.
local function flow_now()
    if SERVER_TIME then return fmt(NOW) end
    return ARGV[2]
end

-- Jobs still to run behind circuits, `{name = count}` (only `name`'s if given): lib.lua's
-- `move` keeps the counts in P:cheld.
local function flow_held(name)
    local held = {}
    if name ~= nil then
        held[name] = tonumber(redis.call('HGET', P .. ':cheld', name)) or 0
        return held
    end
    local flat = redis.call('HGETALL', P .. ':cheld')
    for i = 1, #flat, 2 do held[flat[i]] = tonumber(flat[i + 1]) end
    return held
end

-- Jobs running behind a circuit now.
local function flow_running(name)
    return tonumber(redis.call('HGET', P .. ':crun', name)) or 0
end
