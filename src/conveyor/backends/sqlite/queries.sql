-- SQLite statements of the conveyor backend. Every statement that changes `state` also sets
-- `state_changed_at` and `note`: the history triggers copy them.

-- name: insert_job
-- A plain job: the columns that stay NULL are not bound (binding them costs a fifth of the
-- insert's time).
INSERT INTO conveyor_jobs (queue, task, args, kwargs, meta, priority, state, max_attempts,
                           run_at, created_at, state_changed_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: insert_job_full
INSERT INTO conveyor_jobs (queue, task, args, kwargs, meta, priority, state, max_attempts,
                           run_at, created_at, state_changed_at, unique_key,
                           on_dependency_failure, dependency_depth, concurrency_key,
                           concurrency_max, rate_key, rate_max, rate_period, circuit)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: lock_dependencies
-- (the transaction is the one writer: nothing else can change them before it commits)
SELECT id, dependency_depth FROM conveyor_jobs WHERE id IN (SELECT value FROM json_each(:ids))

-- name: insert_dependencies
INSERT OR IGNORE INTO conveyor_job_dependencies (job_id, depends_on) VALUES (?, ?)

-- name: release_waiting
-- Sets off conveyor_dependency_touched for these jobs: dependencies that already finished
-- release (or cancel) them at once.
UPDATE conveyor_job_dependencies SET depends_on = depends_on
WHERE job_id IN (SELECT value FROM json_each(:ids))

-- name: get_jobs
SELECT * FROM conveyor_jobs WHERE id IN (SELECT value FROM json_each(:ids))

-- name: find_unique
-- The job holding a unique key: the unfinished one, else (with :since) the newest that
-- finished since then.
SELECT * FROM conveyor_jobs INDEXED BY conveyor_jobs_unique
WHERE unique_key = :key
  AND (state IN ({unfinished_states})
       OR finished_at >= :since)
ORDER BY finished_at IS NULL DESC, finished_at DESC
LIMIT 1

-- name: last_insert_id
SELECT last_insert_rowid()

-- name: record_enqueued
INSERT INTO conveyor_job_history (job_id, at, from_state, to_state, worker_id, note)
SELECT id, created_at, NULL, state, NULL, note FROM conveyor_jobs
WHERE id BETWEEN :first AND :last

-- name: promote_due
UPDATE conveyor_jobs INDEXED BY conveyor_jobs_due
SET state = 'queued', worker_id = NULL, state_changed_at = :now, note = NULL
WHERE state IN ({due_states}) AND run_at <= :now

-- name: claim
-- The plain claim: jobs without limits, from queues that are neither paused nor limited.
UPDATE conveyor_jobs
SET state = 'running', attempt = attempt + 1, worker_id = :worker_id,
    started_at = NULL,  -- recorded when the worker begins it
    lease_until = :lease_until, state_changed_at = :now, note = NULL
WHERE id IN (SELECT id FROM conveyor_jobs INDEXED BY conveyor_jobs_runnable
             WHERE state = 'queued' AND concurrency_key IS NULL AND rate_key IS NULL
               AND queue NOT IN (SELECT name FROM conveyor_queues
                                 WHERE paused_at IS NOT NULL OR concurrency IS NOT NULL)
               AND (circuit IS NULL
                    OR circuit NOT IN (SELECT name FROM conveyor_circuits WHERE state <> 'closed'))
             ORDER BY priority, run_at, id
             LIMIT :limit)
RETURNING *

-- name: claim_in_queue
UPDATE conveyor_jobs
SET state = 'running', attempt = attempt + 1, worker_id = :worker_id,
    started_at = NULL,  -- recorded when the worker begins it
    lease_until = :lease_until, state_changed_at = :now, note = NULL
WHERE id IN (SELECT id FROM conveyor_jobs INDEXED BY conveyor_jobs_runnable_queue
             WHERE state = 'queued' AND concurrency_key IS NULL AND rate_key IS NULL
               AND queue = :queue
               AND queue NOT IN (SELECT name FROM conveyor_queues
                                 WHERE paused_at IS NOT NULL OR concurrency IS NOT NULL)
               AND (circuit IS NULL
                    OR circuit NOT IN (SELECT name FROM conveyor_circuits WHERE state <> 'closed'))
             ORDER BY priority, run_at, id
             LIMIT :limit)
RETURNING *

-- name: begin_now
-- Claimed jobs that begin at once (the rest of a claim is claimed ahead): never before they were
-- created (an enqueuer's clock may be a hair ahead of this one).
UPDATE conveyor_jobs SET started_at = max(:now, created_at)
WHERE id IN (SELECT value FROM json_each(:ids))

-- name: claim_candidates
-- The best `limit` plain jobs of one queue; a claim over several queues merges these.
SELECT id, priority, run_at, queue, concurrency_key, concurrency_max, rate_key, rate_max, circuit
FROM conveyor_jobs INDEXED BY conveyor_jobs_runnable_queue
WHERE state = 'queued' AND concurrency_key IS NULL AND rate_key IS NULL AND queue = :queue
  AND queue NOT IN (SELECT name FROM conveyor_queues
                    WHERE paused_at IS NOT NULL OR concurrency IS NOT NULL)
  AND (circuit IS NULL
       OR circuit NOT IN (SELECT name FROM conveyor_circuits WHERE state <> 'closed'))
ORDER BY priority, run_at, id
LIMIT :limit

-- name: plain_candidates
-- The best `limit` plain jobs of every queue.
SELECT id, priority, run_at, queue, concurrency_key, concurrency_max, rate_key, rate_max, circuit
FROM conveyor_jobs INDEXED BY conveyor_jobs_runnable
WHERE state = 'queued' AND concurrency_key IS NULL AND rate_key IS NULL
  AND queue NOT IN (SELECT name FROM conveyor_queues
                    WHERE paused_at IS NOT NULL OR concurrency IS NOT NULL)
  AND (circuit IS NULL
       OR circuit NOT IN (SELECT name FROM conveyor_circuits WHERE state <> 'closed'))
ORDER BY priority, run_at, id
LIMIT :limit

-- name: claim_ids
UPDATE conveyor_jobs
SET state = 'running', attempt = attempt + 1, worker_id = :worker_id,
    started_at = NULL,  -- recorded when the worker begins it
    lease_until = :lease_until, state_changed_at = :now, note = NULL
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'queued'
RETURNING *

-- name: limits_present
-- Whether any queued job has a limit or any queue has one: only then does a claim need the
-- limited path.
SELECT EXISTS (SELECT 1 FROM conveyor_jobs INDEXED BY conveyor_jobs_queued_concurrency
               WHERE state = 'queued' AND concurrency_key IS NOT NULL)
    OR EXISTS (SELECT 1 FROM conveyor_jobs INDEXED BY conveyor_jobs_queued_rate
               WHERE state = 'queued' AND rate_key IS NOT NULL)
    OR EXISTS (SELECT 1 FROM conveyor_queues WHERE concurrency IS NOT NULL)
    OR EXISTS (SELECT 1 FROM conveyor_circuits WHERE state = 'half_open')

-- name: limited_queues
-- Queues with a limit, not paused, and how many more of their jobs may start.
SELECT name, concurrency - (SELECT count(*) FROM conveyor_jobs INDEXED BY conveyor_jobs_state_queue
                            WHERE queue = q.name AND state = 'running') AS free
FROM conveyor_queues AS q
WHERE concurrency IS NOT NULL AND paused_at IS NULL

-- name: limited_queue_candidates
-- The best plain jobs of a queue with a limit.
SELECT id, priority, run_at, queue, concurrency_key, concurrency_max, rate_key, rate_max, circuit
FROM conveyor_jobs INDEXED BY conveyor_jobs_runnable_queue
WHERE state = 'queued' AND concurrency_key IS NULL AND rate_key IS NULL AND queue = :queue
  AND (circuit IS NULL
       OR circuit NOT IN (SELECT name FROM conveyor_circuits WHERE state <> 'closed'))
ORDER BY priority, run_at, id
LIMIT :limit

-- name: half_open_circuits
-- Circuits letting a few held jobs through, and how many more may start.
SELECT name, half_open_jobs - (SELECT count(*) FROM conveyor_jobs INDEXED BY conveyor_jobs_state
                               WHERE state = 'running' AND circuit = c.name) AS free
FROM conveyor_circuits AS c
WHERE state = 'half_open'

-- name: circuit_candidates
SELECT id, priority, run_at, queue, concurrency_key, concurrency_max, rate_key, rate_max, circuit
FROM conveyor_jobs INDEXED BY conveyor_jobs_queued_circuit
WHERE state = 'queued' AND circuit = :circuit
  AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
  AND queue NOT IN (SELECT name FROM conveyor_queues WHERE paused_at IS NOT NULL)
ORDER BY priority, run_at, id
LIMIT :limit

-- name: concurrency_buckets
-- Every concurrency bucket with queued jobs (one index step each, not a scan of the jobs),
-- with its running jobs, and its best queued job (the head) with the limit that job carries.
WITH RECURSIVE k(key) AS (
    SELECT min(concurrency_key) FROM conveyor_jobs INDEXED BY conveyor_jobs_queued_concurrency
    WHERE state = 'queued' AND concurrency_key IS NOT NULL
    UNION ALL
    SELECT (SELECT min(concurrency_key)
            FROM conveyor_jobs INDEXED BY conveyor_jobs_queued_concurrency
            WHERE state = 'queued' AND concurrency_key > k.key)
    FROM k WHERE k.key IS NOT NULL
)
SELECT k.key, h.concurrency_max AS max, h.priority, h.run_at, h.id,
       (SELECT count(*) FROM conveyor_jobs INDEXED BY conveyor_jobs_running_concurrency
        WHERE state = 'running' AND concurrency_key = k.key) AS used
FROM k JOIN conveyor_jobs AS h
    ON h.id = (SELECT id FROM conveyor_jobs INDEXED BY conveyor_jobs_queued_concurrency
               WHERE state = 'queued' AND concurrency_key = k.key
               ORDER BY priority, run_at, id LIMIT 1)
WHERE k.key IS NOT NULL

-- name: concurrency_candidates
SELECT id, priority, run_at, queue, concurrency_key, concurrency_max, rate_key, rate_max, circuit
FROM conveyor_jobs INDEXED BY conveyor_jobs_queued_concurrency
WHERE state = 'queued' AND concurrency_key = :key
  AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
  AND queue NOT IN (SELECT name FROM conveyor_queues WHERE paused_at IS NOT NULL)
  AND (circuit IS NULL
       OR circuit NOT IN (SELECT name FROM conveyor_circuits WHERE state = 'open'))
ORDER BY priority, run_at, id
LIMIT :limit

-- name: rate_buckets
-- Every rate bucket with queued jobs, with its starts still in their window, and its best
-- queued job (the head) with the limit that job carries.
WITH RECURSIVE k(key) AS (
    SELECT min(rate_key) FROM conveyor_jobs INDEXED BY conveyor_jobs_queued_rate
    WHERE state = 'queued' AND rate_key IS NOT NULL
    UNION ALL
    SELECT (SELECT min(rate_key) FROM conveyor_jobs INDEXED BY conveyor_jobs_queued_rate
            WHERE state = 'queued' AND rate_key > k.key)
    FROM k WHERE k.key IS NOT NULL
)
SELECT k.key, h.rate_max AS max, h.priority, h.run_at, h.id,
       (SELECT count(*) FROM conveyor_rate_starts AS s
        WHERE s.key = k.key AND s.until > :now) AS used
FROM k JOIN conveyor_jobs AS h
    ON h.id = (SELECT id FROM conveyor_jobs INDEXED BY conveyor_jobs_queued_rate
               WHERE state = 'queued' AND rate_key = k.key
               ORDER BY priority, run_at, id LIMIT 1)
WHERE k.key IS NOT NULL

-- name: rate_candidates
SELECT id, priority, run_at, queue, concurrency_key, concurrency_max, rate_key, rate_max, circuit
FROM conveyor_jobs INDEXED BY conveyor_jobs_queued_rate
WHERE state = 'queued' AND rate_key = :key
  AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
  AND queue NOT IN (SELECT name FROM conveyor_queues WHERE paused_at IS NOT NULL)
  AND (circuit IS NULL
       OR circuit NOT IN (SELECT name FROM conveyor_circuits WHERE state = 'open'))
ORDER BY priority, run_at, id
LIMIT :limit

-- name: record_rate_starts
INSERT INTO conveyor_rate_starts (key, until)
SELECT rate_key, :now + rate_period FROM conveyor_jobs
WHERE id IN (SELECT value FROM json_each(:ids)) AND rate_key IS NOT NULL

-- name: prune_rate_starts
DELETE FROM conveyor_rate_starts WHERE until <= :now

-- name: held_back
-- Whether queued jobs wait in these (unpaused) queues that no claim took — held back by a
-- limit, or about to be taken by another worker — and when the next rate window opens.
SELECT EXISTS (SELECT 1 FROM conveyor_jobs
               WHERE state = 'queued'
                 AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
                 AND queue NOT IN (SELECT name FROM conveyor_queues WHERE paused_at IS NOT NULL)
                 AND (circuit IS NULL OR circuit NOT IN (SELECT name FROM conveyor_circuits
                                                         WHERE state = 'open')))
       AS held,
       (SELECT min(until) FROM conveyor_rate_starts WHERE until > :now) - :now AS opens_in

-- name: set_queue_concurrency
INSERT INTO conveyor_queues (name, concurrency) VALUES (:name, :concurrency)
ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency

-- name: queue_limits
SELECT name, concurrency FROM conveyor_queues WHERE concurrency IS NOT NULL ORDER BY name

-- name: complete
-- A batch of outcomes in one statement, each a plain guarded write of what `Outcome` decided:
-- it applies only to the very attempt the outcome is about, while it is still running. One
-- statement, not one a job: the worker's database thread takes and gives back Python's lock
-- once a batch, not once a job. `+j.state` keeps the planner on a look-up per id (by the
-- state's index it would visit every running job for each outcome).
-- Each outcome is an array: [id, worker_id, attempt, state, result, error, run_at, refund,
-- finished_at, progress, keeps_cancel_request, keeps_requester_note, at, note,
-- lease_expired_before, leader, ran_for].
UPDATE conveyor_jobs AS j
SET state = o.state,
    result = o.result,
    errors = CASE WHEN o.error IS NULL THEN j.errors
                  ELSE json_insert(j.errors, '$[#]', json(o.error)) END,
    run_at = coalesce(o.run_at, j.run_at),
    attempt = j.attempt - o.refund,
    finished_at = o.finished_at,
    progress = coalesce(o.progress, j.progress),
    lease_until = NULL,
    cancel_requested = CASE WHEN o.keeps_cancel_request THEN j.cancel_requested ELSE 0 END,
    state_changed_at = o.at,
    note = CASE WHEN o.keeps_requester_note AND j.cancel_requested THEN coalesce(j.note, o.note)
                ELSE o.note END,
    -- when it began, as long before the outcome as it ran (a start recorded while it ran was
    -- an estimate); kept if it never began. Never before it was created (its enqueuer's clock
    -- may be a hair ahead of this one)
    started_at = CASE WHEN o.ran_for IS NULL THEN j.started_at
                      ELSE max(o.at - o.ran_for, j.created_at) END
FROM (SELECT json_extract(value, '$[0]') AS id,
             json_extract(value, '$[1]') AS worker_id,
             json_extract(value, '$[2]') AS attempt,
             json_extract(value, '$[3]') AS state,
             json_extract(value, '$[4]') AS result,
             json_extract(value, '$[5]') AS error,
             json_extract(value, '$[6]') AS run_at,
             json_extract(value, '$[7]') AS refund,
             json_extract(value, '$[8]') AS finished_at,
             json_extract(value, '$[9]') AS progress,
             json_extract(value, '$[10]') AS keeps_cancel_request,
             json_extract(value, '$[11]') AS keeps_requester_note,
             json_extract(value, '$[12]') AS at,
             json_extract(value, '$[13]') AS note,
             json_extract(value, '$[14]') AS lease_expired_before,
             json_extract(value, '$[15]') AS leader,
             json_extract(value, '$[16]') AS ran_for
      FROM json_each(:outcomes)) AS o
WHERE j.id = o.id AND +j.state = 'running' AND j.worker_id = o.worker_id
  AND j.attempt = o.attempt
  AND (o.lease_expired_before IS NULL OR j.lease_until < o.lease_expired_before)
  -- a rescue decided by a leader applies only while it leads (nobody has taken over)
  AND (o.leader IS NULL OR EXISTS (SELECT 1 FROM conveyor_leaders WHERE holder = o.leader))
RETURNING id

-- name: record_starts
-- When attempts claimed ahead began on their worker, while each is still running there; once.
-- Each start is an array: [id, worker_id, attempt, at, ago].
UPDATE conveyor_jobs AS j
SET started_at = max(s.at - s.ago, j.created_at)
FROM (SELECT json_extract(value, '$[0]') AS id,
             json_extract(value, '$[1]') AS worker_id,
             json_extract(value, '$[2]') AS attempt,
             json_extract(value, '$[3]') AS at,
             json_extract(value, '$[4]') AS ago
      FROM json_each(:starts)) AS s
WHERE j.id = s.id AND +j.state = 'running' AND j.worker_id = s.worker_id
  AND j.attempt = s.attempt AND j.started_at IS NULL

-- name: cancel_requested_leftovers
-- Jobs asked to stop that were retried or handed back instead: they end cancelled.
UPDATE conveyor_jobs
SET state = 'cancelled', finished_at = :now, cancel_requested = 0, state_changed_at = :now,
    note = 'cancelled'
WHERE id IN (SELECT value FROM json_each(:ids))
  AND cancel_requested = 1 AND state IN ({left_states})

-- name: upsert_worker
INSERT INTO conveyor_workers (id, host, pid, queues, concurrency, started_at, last_beat, running)
VALUES (:id, :host, :pid, :queues, :concurrency, :started_at, :last_beat, :running)
ON CONFLICT (id) DO UPDATE SET last_beat = excluded.last_beat, running = excluded.running

-- name: extend_leases
-- The attempts still running under this worker get a new lease; the rest were taken from it.
UPDATE conveyor_jobs
SET lease_until = :lease_until
WHERE state = 'running' AND worker_id = :worker_id
  AND id IN (SELECT value FROM json_each(:ids))
  AND id || ':' || attempt IN (SELECT value FROM json_each(:attempts))
RETURNING id, attempt, cancel_requested

-- name: worker_beats
SELECT id, last_beat FROM conveyor_workers

-- name: running_of_worker
-- What the store has running under a worker: the heartbeat compares it with what it runs, after
-- a claim of the worker failed (its answer may have been lost).
SELECT id, attempt, cancel_requested FROM conveyor_jobs INDEXED BY conveyor_jobs_leased
WHERE state = 'running' AND worker_id = :worker_id

-- name: delete_worker
DELETE FROM conveyor_workers WHERE id = :id

-- name: prune_workers
DELETE FROM conveyor_workers WHERE id IN (SELECT value FROM json_each(:ids))

-- name: find_expired
SELECT * FROM conveyor_jobs INDEXED BY conveyor_jobs_leased
WHERE state = 'running' AND lease_until < :now
ORDER BY lease_until
LIMIT :limit

-- name: find_running_of
-- The running jobs of workers seen to stop beating (whatever their leases say).
SELECT * FROM conveyor_jobs INDEXED BY conveyor_jobs_leased
WHERE state = 'running' AND worker_id IN (SELECT value FROM json_each(:workers))
ORDER BY lease_until
LIMIT :limit

-- name: get_leader
SELECT holder, until FROM conveyor_leaders WHERE name = :name

-- name: put_leader
INSERT INTO conveyor_leaders (name, holder, until) VALUES (:name, :holder, :until)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until

-- name: resign
DELETE FROM conveyor_leaders WHERE name = :name AND holder = :holder

-- name: next_due_in
SELECT min(run_at) - :now AS due_in FROM conveyor_jobs INDEXED BY conveyor_jobs_due
WHERE state IN ({due_states})

-- name: next_due_in_queues
SELECT min((SELECT min(run_at) FROM conveyor_jobs INDEXED BY conveyor_jobs_due_queue
            WHERE queue = q.value AND state IN ({due_states}))) - :now AS due_in
FROM json_each(:queues) AS q

-- name: get_job
SELECT * FROM conveyor_jobs WHERE id = :id

-- name: list_jobs
SELECT * FROM conveyor_jobs
WHERE (:queue IS NULL OR queue = :queue)
  AND (:task IS NULL OR task = :task)
  AND (:error_type IS NULL OR json_extract(errors, '$[#-1].type') = :error_type)
  AND id < coalesce(:before_id, 9223372036854775807) AND id > coalesce(:after_id, 0)
  AND (:contains IS NULL OR instr(lower(task || ' ' || args || ' ' || kwargs), :contains) > 0)
  AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids)))
ORDER BY id DESC
LIMIT :limit

-- name: list_jobs_in_states
SELECT * FROM conveyor_jobs INDEXED BY conveyor_jobs_state
WHERE state IN (SELECT value FROM json_each(:states))
  AND (:queue IS NULL OR queue = :queue)
  AND (:task IS NULL OR task = :task)
  AND (:error_type IS NULL OR json_extract(errors, '$[#-1].type') = :error_type)
  AND id < coalesce(:before_id, 9223372036854775807) AND id > coalesce(:after_id, 0)
  AND (:contains IS NULL OR instr(lower(task || ' ' || args || ' ' || kwargs), :contains) > 0)
  AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids)))
ORDER BY id DESC
LIMIT :limit

-- name: job_history
SELECT * FROM conveyor_job_history WHERE job_id = :id ORDER BY id

-- name: noted
SELECT DISTINCT job_id FROM conveyor_job_history
WHERE job_id IN (SELECT value FROM json_each(:ids)) AND substr(note, 1, length(:prefix)) = :prefix

-- name: queue_stats
SELECT queue, state, count(*) AS n FROM conveyor_jobs GROUP BY state, queue

-- name: queue_stats_in_states
SELECT queue, state, count(*) AS n FROM conveyor_jobs INDEXED BY conveyor_jobs_state_queue
WHERE state IN (SELECT value FROM json_each(:states))
GROUP BY state, queue

-- name: dead_groups
-- The dead-letter queue by task and the type of the last error, biggest group first.
SELECT task, json_extract(errors, '$[#-1].type') AS error_type, count(*) AS n,
       max(id) AS newest_id, max(finished_at) AS newest_at
FROM conveyor_jobs INDEXED BY conveyor_jobs_finished
WHERE state = 'dead' AND finished_at IS NOT NULL AND (:queue IS NULL OR queue = :queue)
GROUP BY task, error_type
ORDER BY n DESC, task, error_type

-- name: finished_counts
-- Jobs finished since a moment, per queue, state and time bucket (an index range scan).
SELECT queue, state, CAST(finished_at / :bucket AS INTEGER) * :bucket AS bucket, count(*) AS n
FROM conveyor_jobs INDEXED BY conveyor_jobs_finished
WHERE state IN ({finished_states}) AND finished_at >= :since
GROUP BY queue, state, bucket

-- name: queued_since
-- Per queue, since when its oldest queued job has been waiting.
SELECT queue, min(state_changed_at) AS since FROM conveyor_jobs
WHERE state = 'queued' GROUP BY queue

-- name: list_workers
-- (no clock of its own: a reader judges a beat's age by its own clock)
SELECT *, NULL AS beat_age FROM conveyor_workers ORDER BY started_at, id

-- name: cancel_pending
UPDATE conveyor_jobs
SET state = 'cancelled', finished_at = :now, state_changed_at = :now, note = :note
WHERE id = :id AND state IN ({cancellable_states})

-- name: cancel_jobs
UPDATE conveyor_jobs
SET state = 'cancelled', finished_at = :now, state_changed_at = :now, note = :note
WHERE state IN (SELECT value FROM json_each(:states))
  AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids)))
  AND (:queue IS NULL OR queue = :queue)
  AND (:task IS NULL OR task = :task)

-- name: request_cancel
UPDATE conveyor_jobs
SET cancel_requested = 1, note = :note
WHERE id = :id AND state = 'running'

-- name: retry_jobs
UPDATE conveyor_jobs
SET state = 'queued', attempt = 0, run_at = :now, started_at = NULL, finished_at = NULL,
    lease_until = NULL, worker_id = NULL, cancel_requested = 0, progress = NULL, stage = NULL,
    result = NULL, state_changed_at = :now, note = :note
WHERE state IN (SELECT value FROM json_each(:states))
  AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids)))
  AND (:queue IS NULL OR queue = :queue)
  AND (:task IS NULL OR task = :task)
  -- a job with a unique key comes back only if no unfinished job holds the key, and only the
  -- newest of the matching jobs with that key
  AND (unique_key IS NULL OR (
        NOT EXISTS (SELECT 1 FROM conveyor_jobs AS h
                    WHERE h.unique_key = conveyor_jobs.unique_key
                      AND h.state IN ({unfinished_states}))
        AND NOT EXISTS (SELECT 1 FROM conveyor_jobs AS n
                        WHERE n.unique_key = conveyor_jobs.unique_key
                          AND n.id > conveyor_jobs.id
                          AND n.state IN (SELECT value FROM json_each(:states))
                          AND (:ids IS NULL OR n.id IN (SELECT value FROM json_each(:ids)))
                          AND (:queue IS NULL OR n.queue = :queue)
                          AND (:task IS NULL OR n.task = :task))))
RETURNING id

-- name: purge_history
DELETE FROM conveyor_job_history
WHERE job_id IN (SELECT id FROM conveyor_jobs
                 WHERE state IN (SELECT value FROM json_each(:states))
                   AND finished_at <= :now - :age
                   AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids)))
                   AND (:queue IS NULL OR queue = :queue)
                   AND (:task IS NULL OR task = :task))

-- name: purge
DELETE FROM conveyor_jobs
WHERE state IN (SELECT value FROM json_each(:states))
  AND finished_at <= :now - :age
  AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids)))
  AND (:queue IS NULL OR queue = :queue)
  AND (:task IS NULL OR task = :task)

-- name: set_progress
UPDATE conveyor_jobs
SET progress = :progress, stage = coalesce(:stage, stage)
WHERE id = :id AND state = 'running' AND worker_id = :worker_id AND attempt = :attempt

-- name: record_progress
INSERT INTO conveyor_job_progress (job_id, at, progress, stage, message, worker_id)
VALUES (:id, :now, :progress, :stage, :message, :worker_id)

-- name: event_cursor
SELECT (SELECT coalesce(max(id), 0) FROM conveyor_job_history) AS history,
       (SELECT coalesce(max(id), 0) FROM conveyor_job_progress) AS progress

-- name: history_events
-- With the job's times, for the wait and run time of an attempt that finished (see Event).
SELECT h.id, h.job_id, h.at, h.from_state, h.to_state, h.note, h.worker_id, j.queue, j.task,
       j.run_at, j.started_at, j.finished_at
FROM conveyor_job_history AS h LEFT JOIN conveyor_jobs AS j ON j.id = h.job_id
WHERE h.id > :after
  AND (:job_id IS NULL OR h.job_id = :job_id)
  AND (:queue IS NULL OR j.queue = :queue)
ORDER BY h.id
LIMIT :limit

-- name: progress_events
SELECT p.id, p.job_id, p.at, p.progress, p.stage, p.message, p.worker_id, j.queue, j.task
FROM conveyor_job_progress AS p LEFT JOIN conveyor_jobs AS j ON j.id = p.job_id
WHERE p.id > :after
  AND (:job_id IS NULL OR p.job_id = :job_id)
  AND (:queue IS NULL OR j.queue = :queue)
ORDER BY p.id
LIMIT :limit

-- name: prune_progress
DELETE FROM conveyor_job_progress WHERE at < :now - :age

-- name: data_version
PRAGMA data_version

-- name: list_tables
SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS conveyor_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
)

-- name: applied_migrations
SELECT version FROM conveyor_migrations ORDER BY version

-- name: record_migration
INSERT INTO conveyor_migrations (version, name, applied_at) VALUES (:version, :name, :now)

-- name: forget_migration
DELETE FROM conveyor_migrations WHERE version = :version

-- name: pause_queue
INSERT INTO conveyor_queues (name, paused_at) VALUES (:name, :now)
ON CONFLICT (name) DO UPDATE SET paused_at = excluded.paused_at WHERE paused_at IS NULL

-- name: resume_queue
UPDATE conveyor_queues SET paused_at = NULL WHERE name = :name AND paused_at IS NOT NULL

-- name: paused_queues
SELECT name FROM conveyor_queues WHERE paused_at IS NOT NULL ORDER BY name

-- name: record_tick
-- A tick fired by a leader is recorded only while it leads (nobody has taken over).
INSERT INTO conveyor_cron_ticks (name, tick, job_id, fired_at)
SELECT :name, :tick, NULL, :now
WHERE :leader IS NULL OR EXISTS (SELECT 1 FROM conveyor_leaders WHERE holder = :leader)
ON CONFLICT DO NOTHING

-- name: set_tick_job
UPDATE conveyor_cron_ticks SET job_id = :job_id WHERE name = :name AND tick = :tick

-- name: periodic_ticks
-- Per entry: the latest tick dealt with, and the latest that stored a job, with its state.
SELECT t.name, t.tick, f.tick AS fired_tick, f.job_id, j.state AS job_state
FROM (SELECT name, max(tick) AS tick FROM conveyor_cron_ticks GROUP BY name) AS t
LEFT JOIN conveyor_cron_ticks AS f
       ON f.name = t.name
      AND f.tick = (SELECT max(tick) FROM conveyor_cron_ticks
                    WHERE name = t.name AND job_id IS NOT NULL)
LEFT JOIN conveyor_jobs AS j ON j.id = f.job_id
ORDER BY t.name

-- name: prune_ticks
-- Old ticks go; each entry's latest stays, to carry on from.
DELETE FROM conveyor_cron_ticks
WHERE tick < :now - :age
  AND tick < (SELECT max(tick) FROM conveyor_cron_ticks AS latest
              WHERE latest.name = conveyor_cron_ticks.name)

-- name: ensure_circuit
INSERT INTO conveyor_circuits (name) VALUES (:name) ON CONFLICT (name) DO NOTHING

-- name: lock_circuit
-- The circuit's row (nulls if it has none), and the time to date a change with. The
-- transaction it runs in is the one writer: nothing changes the row before it commits.
SELECT :now AS now, c.* FROM (SELECT 1) LEFT JOIN conveyor_circuits AS c ON c.name = :name

-- name: put_circuit
INSERT INTO conveyor_circuits (name, state, failures, opened_at, reason, probed_at, half_open_jobs)
VALUES (:name, :state, :failures, :opened_at, :reason, :probed_at, :half_open_jobs)
ON CONFLICT (name) DO UPDATE SET
    state = excluded.state, failures = excluded.failures, opened_at = excluded.opened_at,
    reason = excluded.reason, probed_at = excluded.probed_at,
    half_open_jobs = excluded.half_open_jobs

-- name: held_by_circuit
-- The jobs behind a circuit still to run (and, with :running, those running now).
SELECT count(*) AS held FROM conveyor_jobs INDEXED BY conveyor_jobs_circuit_state
WHERE circuit = :name
  AND (state IN ({to_run_states}) OR (:running AND state = 'running'))

-- name: log_circuit
INSERT INTO conveyor_circuit_log (name, at, event, reason, held, open_for)
VALUES (:name, :at, :event, :reason, :held, :open_for)

-- name: record_probe
UPDATE conveyor_circuits SET probed_at = :now WHERE name = :name

-- name: list_circuits
SELECT c.*, (SELECT count(*) FROM conveyor_jobs INDEXED BY conveyor_jobs_circuit_state
             WHERE circuit = c.name
               AND state IN ({held_states})) AS held
FROM conveyor_circuits AS c
ORDER BY name

-- name: circuit_log
SELECT * FROM conveyor_circuit_log
WHERE (:name IS NULL OR name = :name)
ORDER BY id DESC
LIMIT :limit

-- name: claim_alert
-- Take the right to send an alert: only if the key was not sent within the period.
INSERT INTO conveyor_alerts (key, sent_at) VALUES (:key, :now)
ON CONFLICT (key) DO UPDATE SET sent_at = excluded.sent_at
WHERE conveyor_alerts.sent_at <= :now - :every

-- name: backlog
-- A queue's queued jobs, and how long the oldest of them has been waiting.
SELECT count(*) AS depth, :now - min(state_changed_at) AS age FROM conveyor_jobs
WHERE queue = :queue AND state = 'queued'

-- name: forget_revoked_sessions
-- Sessions that have expired since they were revoked: their cookies are refused anyway.
DELETE FROM conveyor_revoked_sessions WHERE until < :now

-- name: revoke_session
INSERT INTO conveyor_revoked_sessions (nonce, until) VALUES (:nonce, :until)
ON CONFLICT (nonce) DO NOTHING

-- name: session_revoked
SELECT 1 AS revoked FROM conveyor_revoked_sessions WHERE nonce = :nonce
