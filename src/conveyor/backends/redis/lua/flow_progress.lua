-- Record progress ARGV[6] (and stage ARGV[8] if ARGV[7] is '1') of job ARGV[3], only while
-- its attempt ARGV[5] runs under worker ARGV[4]; and append the report, with message ARGV[10]
-- if ARGV[9] is '1', to the progress stream. Returns 1 if recorded, 0 if the attempt no longer
-- runs.
local id, worker, attempt, progress = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local jk = job_key(id)
local f = redis.call('HMGET', jk, 'state', 'worker_id', 'attempt', 'queue', 'task')
if f[1] ~= 'running' or f[2] ~= worker or f[3] ~= attempt then return 0 end
local report = {'j', id, 'at', flow_now(), 'p', progress, 'w', worker, 'q', f[4], 'k', f[5]}
if ARGV[7] == '1' then
    redis.call('HSET', jk, 'progress', progress, 'stage', ARGV[8])
    report[#report + 1] = 's'
    report[#report + 1] = ARGV[8]
else
    redis.call('HSET', jk, 'progress', progress)
end
if ARGV[9] == '1' then
    report[#report + 1] = 'm'
    report[#report + 1] = ARGV[10]
end
redis.call('XADD', P .. ':progress', '*', unpack(report))
return 1
