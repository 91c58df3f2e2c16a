-- PostgreSQL statements of the conveyor backend. `{schema}` is the configured schema.
-- Times travel as epoch seconds. A `now`-like parameter that is NULL means the database's own
-- clock (the default, so that workers on machines with skewed clocks agree); tests pass the
-- time of a frozen clock instead.

-- name: insert_jobs
-- Many jobs in one statement, as arrays sent in binary: no parameter limit, one round trip.
-- The statement also records each job's first history entry and wakes idle workers with one
-- NOTIFY naming the queues that got runnable jobs (`woken`, run once for the statement).
WITH c AS (SELECT coalesce(to_timestamp(%(now)s::float8), now()) AS now),
job AS (
    INSERT INTO {schema}.jobs (queue, task, args, kwargs, meta, priority, state, max_attempts,
                               run_at, created_at, state_changed_at,
                               on_dependency_failure, dependency_depth, concurrency_key,
                               concurrency_max, rate_key, rate_max, rate_period, circuit)
    SELECT j.queue, j.task, j.args::json, j.kwargs::json, j.meta::json, j.priority,
           j.state, j.max_attempts, c.now + make_interval(secs => j.delay), c.now, c.now,
           j.on_failure, j.depth, j.concurrency_key, j.concurrency_max, j.rate_key,
           j.rate_max, j.rate_period, j.circuit
    FROM c,
         unnest(%(queues)b::text[], %(tasks)b::text[], %(args)b::text[], %(kwargs)b::text[],
                %(metas)b::text[], %(priorities)b::int[], %(max_attempts)b::int[],
                %(delays)b::float8[], %(states)b::text[], %(on_failures)b::text[],
                %(depths)b::int[], %(concurrency_keys)b::text[],
                %(concurrency_maxes)b::int[], %(rate_keys)b::text[], %(rate_maxes)b::int[],
                %(rate_periods)b::float8[], %(circuits)b::text[])
             WITH ORDINALITY
             AS j(queue, task, args, kwargs, meta, priority, max_attempts, delay, state,
                  on_failure, depth, concurrency_key, concurrency_max, rate_key, rate_max,
                  rate_period, circuit, n)
    ORDER BY j.n
    RETURNING id, queue, state, run_at, created_at
), history AS (
    INSERT INTO {schema}.job_history (job_id, at, from_state, to_state)
    SELECT id, created_at, NULL, state FROM job ORDER BY id
), woken AS (
    SELECT pg_notify('{schema}_jobs', left(string_agg(DISTINCT queue, ','), 7000))
    FROM job WHERE state = 'queued' HAVING count(*) > 0
)
SELECT id, state, extract(epoch FROM run_at)::float8 AS run_at,
       extract(epoch FROM created_at)::float8 AS created_at
FROM job
WHERE (SELECT count(*) FROM woken) >= 0

-- name: insert_unique_jobs
-- insert_jobs for a batch with unique keys (each key at most once in the batch): a job whose
-- key is held — by an unfinished job (the unique index: ON CONFLICT DO NOTHING, which also
-- waits out a concurrent insert of the key), or by one that finished within its unique_for —
-- is not inserted; find_unique then returns the holder.
WITH c AS (SELECT coalesce(to_timestamp(%(now)s::float8), now()) AS now),
job AS (
    INSERT INTO {schema}.jobs (queue, task, args, kwargs, meta, priority, state, max_attempts,
                               run_at, created_at, state_changed_at, unique_key,
                               on_dependency_failure, dependency_depth, concurrency_key,
                               concurrency_max, rate_key, rate_max, rate_period, circuit)
    SELECT j.queue, j.task, j.args::json, j.kwargs::json, j.meta::json, j.priority,
           j.state, j.max_attempts, c.now + make_interval(secs => j.delay), c.now, c.now,
           j.unique_key, j.on_failure, j.depth, j.concurrency_key, j.concurrency_max,
           j.rate_key, j.rate_max, j.rate_period, j.circuit
    FROM c,
         unnest(%(queues)b::text[], %(tasks)b::text[], %(args)b::text[], %(kwargs)b::text[],
                %(metas)b::text[], %(priorities)b::int[], %(max_attempts)b::int[],
                %(delays)b::float8[], %(states)b::text[], %(on_failures)b::text[],
                %(depths)b::int[], %(concurrency_keys)b::text[],
                %(concurrency_maxes)b::int[], %(rate_keys)b::text[], %(rate_maxes)b::int[],
                %(rate_periods)b::float8[], %(circuits)b::text[], %(unique_keys)b::text[],
                %(unique_fors)b::float8[])
             WITH ORDINALITY
             AS j(queue, task, args, kwargs, meta, priority, max_attempts, delay, state,
                  on_failure, depth, concurrency_key, concurrency_max, rate_key, rate_max,
                  rate_period, circuit, unique_key, unique_for, n)
    WHERE j.unique_for IS NULL
       OR NOT EXISTS (SELECT FROM {schema}.jobs AS f
                      WHERE f.unique_key = j.unique_key
                        AND f.finished_at >= c.now - make_interval(secs => j.unique_for))
    ORDER BY j.n
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL
        AND state IN ({unfinished_states}) DO NOTHING
    RETURNING id, queue, state, run_at, created_at, unique_key
), history AS (
    INSERT INTO {schema}.job_history (job_id, at, from_state, to_state)
    SELECT id, created_at, NULL, state FROM job ORDER BY id
), woken AS (
    SELECT pg_notify('{schema}_jobs', left(string_agg(DISTINCT queue, ','), 7000))
    FROM job WHERE state = 'queued' HAVING count(*) > 0
)
SELECT id, state, unique_key, extract(epoch FROM run_at)::float8 AS run_at,
       extract(epoch FROM created_at)::float8 AS created_at
FROM job
WHERE (SELECT count(*) FROM woken) >= 0

-- name: find_unique
-- The job holding a unique key: the unfinished one, else (given unique_for) the newest that
-- finished within that many seconds.
SELECT {job_columns} FROM {schema}.jobs AS j
WHERE unique_key = %(key)s
  AND (state IN ({unfinished_states})
       OR finished_at >= coalesce(to_timestamp(%(now)s::float8), now())
                         - make_interval(secs => %(unique_for)s::float8))
ORDER BY finished_at IS NULL DESC, finished_at DESC
LIMIT 1

-- name: insert_job
-- One plain job (no dependencies): the same work as insert_jobs as a single-row insert,
-- cheaper to plan and run.
WITH c AS (SELECT coalesce(to_timestamp(%(now)s::float8), now()) AS now),
job AS (
    INSERT INTO {schema}.jobs (queue, task, args, kwargs, meta, priority, state, max_attempts,
                               run_at, created_at, state_changed_at)
    SELECT %(queue)s, %(task)s, %(args)s::json, %(kwargs)s::json, %(meta)s::json, %(priority)s,
           %(state)s, %(max_attempts)s,
           c.now + make_interval(secs => %(delay)s::float8), c.now, c.now
    FROM c
    RETURNING id, queue, state, run_at, created_at
), history AS (
    INSERT INTO {schema}.job_history (job_id, at, from_state, to_state)
    SELECT id, created_at, NULL, state FROM job
), woken AS (
    SELECT pg_notify('{schema}_jobs', queue) FROM job WHERE state = 'queued'
)
SELECT id, state, extract(epoch FROM run_at)::float8 AS run_at,
       extract(epoch FROM created_at)::float8 AS created_at
FROM job
WHERE (SELECT count(*) FROM woken) >= 0

-- name: promote_due
UPDATE {schema}.jobs
SET state = 'queued', worker_id = NULL, note = NULL,
    state_changed_at = coalesce(to_timestamp(%(now)s::float8), now())
WHERE id IN (SELECT id FROM {schema}.jobs
             WHERE state IN ({due_states})
               AND run_at <= coalesce(to_timestamp(%(now)s::float8), now())
             ORDER BY run_at
             LIMIT 1000
             FOR UPDATE SKIP LOCKED)

-- name: claim
-- The first `begun` jobs (the worker's free slots) begin now; the rest are claimed ahead.
WITH taken AS (
    SELECT id, priority, run_at FROM {schema}.jobs
    WHERE state = 'queued' AND concurrency_key IS NULL AND rate_key IS NULL
      AND queue NOT IN (SELECT name FROM {schema}.queues
                        WHERE paused_at IS NOT NULL OR concurrency IS NOT NULL)
      AND (circuit IS NULL
           OR circuit NOT IN (SELECT name FROM {schema}.circuits WHERE state <> 'closed'))
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT id, row_number() OVER (ORDER BY priority, run_at, id) AS n FROM taken
)
UPDATE {schema}.jobs AS j
SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s,
    -- begun now (the first `begun` in claim order) or claimed ahead (no start time yet)
    started_at = CASE WHEN picked.n <= %(begun)s
                      THEN greatest(coalesce(to_timestamp(%(now)s::float8), statement_timestamp()),
                                    j.created_at) END,
    -- from when the row is taken (a claim held up on its way still gets a whole lease)
    lease_until = coalesce(to_timestamp(%(now)s::float8), clock_timestamp())
                  + make_interval(secs => %(lease)s),
    state_changed_at = coalesce(to_timestamp(%(now)s::float8), now()), note = NULL
FROM picked
WHERE j.id = picked.id
RETURNING {job_columns}

-- name: claim_in_queue
WITH taken AS (
    SELECT id, priority, run_at FROM {schema}.jobs
    WHERE state = 'queued' AND concurrency_key IS NULL AND rate_key IS NULL
      AND queue = %(queue)s
      AND NOT EXISTS (SELECT FROM {schema}.queues
                      WHERE name = %(queue)s
                        AND (paused_at IS NOT NULL OR concurrency IS NOT NULL))
      AND (circuit IS NULL
           OR circuit NOT IN (SELECT name FROM {schema}.circuits WHERE state <> 'closed'))
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT id, row_number() OVER (ORDER BY priority, run_at, id) AS n FROM taken
)
UPDATE {schema}.jobs AS j
SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s,
    -- begun now (the first `begun` in claim order) or claimed ahead (no start time yet)
    started_at = CASE WHEN picked.n <= %(begun)s
                      THEN greatest(coalesce(to_timestamp(%(now)s::float8), statement_timestamp()),
                                    j.created_at) END,
    -- from when the row is taken (a claim held up on its way still gets a whole lease)
    lease_until = coalesce(to_timestamp(%(now)s::float8), clock_timestamp())
                  + make_interval(secs => %(lease)s),
    state_changed_at = coalesce(to_timestamp(%(now)s::float8), now()), note = NULL
FROM picked
WHERE j.id = picked.id
RETURNING {job_columns}

-- name: claim_in_queues
-- Each queue's best candidates come from its own index; the best of those are claimed.
WITH candidates AS (
    SELECT c.id, c.priority, c.run_at
    FROM (SELECT name FROM unnest(%(queues)s::text[]) AS q(name)
          WHERE name NOT IN (SELECT name FROM {schema}.queues
                             WHERE paused_at IS NOT NULL OR concurrency IS NOT NULL))
         AS q
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at FROM {schema}.jobs
        WHERE state = 'queued' AND concurrency_key IS NULL AND rate_key IS NULL
          AND queue = q.name
          AND (circuit IS NULL
               OR circuit NOT IN (SELECT name FROM {schema}.circuits WHERE state <> 'closed'))
        ORDER BY priority, run_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
), picked AS (
    SELECT id, row_number() OVER (ORDER BY priority, run_at, id) AS n
    FROM candidates ORDER BY priority, run_at, id LIMIT %(limit)s
)
UPDATE {schema}.jobs AS j
SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s,
    -- begun now (the first `begun` in claim order) or claimed ahead (no start time yet)
    started_at = CASE WHEN picked.n <= %(begun)s
                      THEN greatest(coalesce(to_timestamp(%(now)s::float8), statement_timestamp()),
                                    j.created_at) END,
    -- from when the row is taken (a claim held up on its way still gets a whole lease)
    lease_until = coalesce(to_timestamp(%(now)s::float8), clock_timestamp())
                  + make_interval(secs => %(lease)s),
    state_changed_at = coalesce(to_timestamp(%(now)s::float8), now()), note = NULL
FROM picked
WHERE j.id = picked.id
RETURNING {job_columns}

-- name: limits_present
-- Whether any queued job has a limit or any queue has one: only then does a claim need the
-- limited path.
SELECT EXISTS (SELECT FROM {schema}.jobs WHERE state = 'queued' AND concurrency_key IS NOT NULL)
    OR EXISTS (SELECT FROM {schema}.jobs WHERE state = 'queued' AND rate_key IS NOT NULL)
    OR EXISTS (SELECT FROM {schema}.queues WHERE concurrency IS NOT NULL)
    OR EXISTS (SELECT FROM {schema}.circuits WHERE state = 'half_open') AS present

-- name: lock_limits
-- Limited claims take turns, cluster-wide (for the rest of their transaction): each counts
-- what the one before it started.
SELECT pg_advisory_xact_lock(hashtextextended('{schema}.limits', 0))

-- name: limited_candidates
-- What a claim may start when limits are in play: the best plain jobs, the best jobs of each
-- queue with a limit and room, and the best jobs of each bucket with room (the buckets found
-- one index step each, not by a scan of the jobs) — each with its buckets' counts.
WITH RECURSIVE c AS (SELECT coalesce(to_timestamp(%(now)s::float8), now()) AS now),
mine AS (SELECT %(queues)s::text[] AS queues),
paused AS (SELECT name FROM {schema}.queues WHERE paused_at IS NOT NULL),
-- circuits not closed: open ones hold their jobs, half-open ones let a few through
unsettled AS (SELECT name, state, half_open_jobs FROM {schema}.circuits WHERE state <> 'closed'),
plain AS (
    SELECT id, priority, run_at, queue, concurrency_key, concurrency_max, rate_key, rate_max,
               circuit
    FROM {schema}.jobs, mine
    WHERE state = 'queued' AND concurrency_key IS NULL AND rate_key IS NULL
      AND (mine.queues IS NULL OR queue = ANY (mine.queues))
      AND queue NOT IN (SELECT name FROM {schema}.queues
                        WHERE paused_at IS NOT NULL OR concurrency IS NOT NULL)
      AND (circuit IS NULL OR circuit NOT IN (SELECT name FROM unsettled))
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR UPDATE OF jobs SKIP LOCKED
),
lq AS (
    SELECT q.name, q.concurrency - (SELECT count(*) FROM {schema}.jobs
                                    WHERE queue = q.name AND state = 'running') AS free
    FROM {schema}.queues AS q, mine
    WHERE q.concurrency IS NOT NULL AND q.paused_at IS NULL
      AND (mine.queues IS NULL OR q.name = ANY (mine.queues))
),
lq_jobs AS (
    SELECT j.* FROM lq
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at, queue, concurrency_key, concurrency_max, rate_key, rate_max,
               circuit
        FROM {schema}.jobs
        WHERE state = 'queued' AND concurrency_key IS NULL AND rate_key IS NULL
          AND queue = lq.name
          AND (circuit IS NULL OR circuit NOT IN (SELECT name FROM unsettled))
        ORDER BY priority, run_at, id
        LIMIT least(greatest(lq.free, 0), %(limit)s)
    ) AS j
),
ckeys(key) AS (
    SELECT min(concurrency_key) FROM {schema}.jobs
    WHERE state = 'queued' AND concurrency_key IS NOT NULL
    UNION ALL
    SELECT (SELECT min(concurrency_key) FROM {schema}.jobs
            WHERE state = 'queued' AND concurrency_key > ckeys.key)
    FROM ckeys WHERE ckeys.key IS NOT NULL
),
cb AS (
    SELECT ckeys.key, h.concurrency_max AS max, h.priority, h.run_at, h.id,
           (SELECT count(*) FROM {schema}.jobs
            WHERE state = 'running' AND concurrency_key = ckeys.key) AS used
    FROM ckeys
    CROSS JOIN LATERAL (
        SELECT concurrency_max, priority, run_at, id FROM {schema}.jobs
        WHERE state = 'queued' AND concurrency_key = ckeys.key
        ORDER BY priority, run_at, id LIMIT 1
    ) AS h
    WHERE ckeys.key IS NOT NULL
),
-- the best jobs that fit lie in at most `limit` buckets: those with room whose heads come
-- first; only theirs are fetched
c_jobs AS (
    SELECT j.* FROM (SELECT * FROM cb WHERE max > used ORDER BY priority, run_at, id
                     LIMIT %(limit)s) AS b, mine
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at, queue, concurrency_key, concurrency_max, rate_key, rate_max,
               circuit
        FROM {schema}.jobs
        WHERE state = 'queued' AND concurrency_key = b.key
          AND (mine.queues IS NULL OR queue = ANY (mine.queues))
          AND queue NOT IN (SELECT name FROM paused)
          AND (circuit IS NULL
               OR circuit NOT IN (SELECT name FROM unsettled WHERE state = 'open'))
        ORDER BY priority, run_at, id
        LIMIT least(%(limit)s, b.max - b.used)
    ) AS j
),
rkeys(key) AS (
    SELECT min(rate_key) FROM {schema}.jobs WHERE state = 'queued' AND rate_key IS NOT NULL
    UNION ALL
    SELECT (SELECT min(rate_key) FROM {schema}.jobs
            WHERE state = 'queued' AND rate_key > rkeys.key)
    FROM rkeys WHERE rkeys.key IS NOT NULL
),
rb AS (
    SELECT rkeys.key, h.rate_max AS max, h.priority, h.run_at, h.id,
           (SELECT count(*) FROM {schema}.rate_starts AS s, c
            WHERE s.key = rkeys.key AND s.until > c.now) AS used
    FROM rkeys
    CROSS JOIN LATERAL (
        SELECT rate_max, priority, run_at, id FROM {schema}.jobs
        WHERE state = 'queued' AND rate_key = rkeys.key
        ORDER BY priority, run_at, id LIMIT 1
    ) AS h
    WHERE rkeys.key IS NOT NULL
),
r_jobs AS (
    SELECT j.* FROM (SELECT * FROM rb WHERE max > used ORDER BY priority, run_at, id
                     LIMIT %(limit)s) AS b, mine
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at, queue, concurrency_key, concurrency_max, rate_key, rate_max,
               circuit
        FROM {schema}.jobs
        WHERE state = 'queued' AND rate_key = b.key
          AND (mine.queues IS NULL OR queue = ANY (mine.queues))
          AND queue NOT IN (SELECT name FROM paused)
          AND (circuit IS NULL
               OR circuit NOT IN (SELECT name FROM unsettled WHERE state = 'open'))
        ORDER BY priority, run_at, id
        LIMIT least(%(limit)s, b.max - b.used)
    ) AS j
),
hc AS (
    SELECT name, half_open_jobs - (SELECT count(*) FROM {schema}.jobs
                                   WHERE state = 'running' AND circuit = u.name) AS free
    FROM unsettled AS u WHERE state = 'half_open'
),
h_jobs AS (
    SELECT j.* FROM hc, mine
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at, queue, concurrency_key, concurrency_max, rate_key, rate_max,
               circuit
        FROM {schema}.jobs
        WHERE state = 'queued' AND circuit = hc.name
          AND (mine.queues IS NULL OR queue = ANY (mine.queues))
          AND queue NOT IN (SELECT name FROM paused)
        ORDER BY priority, run_at, id
        LIMIT least(greatest(hc.free, 0), %(limit)s)
    ) AS j
),
found AS (
    SELECT * FROM plain UNION ALL SELECT * FROM lq_jobs
    UNION ALL SELECT * FROM c_jobs UNION ALL SELECT * FROM r_jobs UNION ALL SELECT * FROM h_jobs
)
SELECT f.id, f.priority, extract(epoch FROM f.run_at)::float8 AS run_at, f.queue,
       f.concurrency_key, f.concurrency_max, f.rate_key, f.rate_max, f.circuit,
       cb.used AS concurrency_used, rb.used AS rate_used, lq.free AS queue_free,
       hc.free AS circuit_free
FROM found AS f
LEFT JOIN cb ON cb.key = f.concurrency_key
LEFT JOIN rb ON rb.key = f.rate_key
LEFT JOIN lq ON lq.name = f.queue
LEFT JOIN hc ON hc.name = f.circuit

-- name: claim_ids
-- Claim the jobs a limited claim picked, and note the starts of rate-limited ones. A start is
-- stamped with this statement's time (now() is the transaction's, which may have begun before
-- the job was enqueued), never before the job was made.
WITH c AS (SELECT coalesce(to_timestamp(%(now)s::float8), statement_timestamp()) AS now),
claimed AS (
    UPDATE {schema}.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s,
        started_at = greatest(c.now, j.created_at),
        lease_until = coalesce(to_timestamp(%(now)s::float8), clock_timestamp())
                      + make_interval(secs => %(lease)s),
        state_changed_at = c.now, note = NULL
    FROM c
    WHERE j.id = ANY (%(ids)s) AND j.state = 'queued'
    RETURNING j.*
), pruned AS (
    DELETE FROM {schema}.rate_starts WHERE until <= (SELECT now FROM c)
), starts AS (
    INSERT INTO {schema}.rate_starts (key, until)
    SELECT rate_key, c.now + make_interval(secs => rate_period) FROM claimed, c
    WHERE rate_key IS NOT NULL
)
SELECT {job_columns} FROM claimed AS j

-- name: held_back
-- Whether queued jobs wait in these (unpaused) queues that no claim took — held back by a
-- limit, or about to be taken by another worker — and when the next rate window opens.
WITH c AS (SELECT coalesce(to_timestamp(%(now)s::float8), now()) AS now)
SELECT EXISTS (SELECT FROM {schema}.jobs
               WHERE state = 'queued'
                 AND (%(queues)s::text[] IS NULL OR queue = ANY (%(queues)s::text[]))
                 AND queue NOT IN (SELECT name FROM {schema}.queues
                                   WHERE paused_at IS NOT NULL)
                 AND (circuit IS NULL
                      OR circuit NOT IN (SELECT name FROM {schema}.circuits
                                         WHERE state = 'open'))) AS held,
       extract(epoch FROM (SELECT min(until) FROM {schema}.rate_starts, c
                           WHERE until > c.now) - (SELECT now FROM c))::float8 AS opens_in

-- name: set_queue_concurrency
INSERT INTO {schema}.queues (name, concurrency) VALUES (%(name)s, %(concurrency)s)
ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency

-- name: queue_limits
SELECT name, concurrency FROM {schema}.queues WHERE concurrency IS NOT NULL ORDER BY name

-- name: complete
-- A batch of outcomes in one statement, each a plain guarded write of what `Outcome` decided.
-- Each applies only to the very attempt it is about, while it is still running under that
-- worker (and, for a rescue, once its lease ran out). The starts of other jobs of the worker,
-- still running, go in the same statement (never in a transaction of several statements: a
-- session stopped between two would hold their rows).
-- The state a row must still have comes with each id (`was`), not as a constant: given
-- `state = 'running'`, the planner, sure that few rows run, scans that range of an index,
-- where every job that ever ran has left an entry until vacuum comes (52 ms a batch with
-- 300,000 finished jobs, against 0.6 ms for a look-up per id).
WITH started AS (
    UPDATE {schema}.jobs AS j
    SET started_at = greatest(coalesce(to_timestamp(s.at), now() - make_interval(secs => s.ago)),
                              j.created_at)
    FROM unnest(%(start_ids)b::bigint[], %(start_worker_ids)b::text[],
                %(start_attempts)b::int[], %(start_ats)b::float8[], %(start_agos)b::float8[],
                array_fill('running'::text, ARRAY[%(start_count)s::int]))
         AS s(id, worker_id, attempt, at, ago, was)
    WHERE j.id = s.id AND j.state = s.was AND j.worker_id = s.worker_id
      AND j.attempt = s.attempt AND j.started_at IS NULL
)
UPDATE {schema}.jobs AS j
SET state = o.state,
    result = o.result::json,
    errors = CASE WHEN o.error IS NULL THEN j.errors
                  ELSE j.errors || jsonb_build_array(o.error::jsonb) END,
    run_at = CASE WHEN o.delay IS NULL THEN j.run_at
                  ELSE coalesce(to_timestamp(o.at), greatest(o.ended, j.state_changed_at)) + make_interval(secs => o.delay) END,
    attempt = j.attempt - o.refund,
    finished_at = CASE WHEN o.finishes THEN coalesce(to_timestamp(o.at), greatest(o.ended, j.state_changed_at)) END,
    progress = coalesce(o.progress, j.progress),
    lease_until = NULL,
    cancel_requested = o.keeps_cancel_request AND j.cancel_requested,
    state_changed_at = coalesce(to_timestamp(o.at), greatest(o.ended, j.state_changed_at)),
    note = CASE WHEN o.keeps_requester_note AND j.cancel_requested THEN coalesce(j.note, o.note)
                ELSE o.note END,
    -- when it began, as long before the outcome as it ran (a start recorded while it ran was
    -- an estimate); kept if it never began
    started_at = CASE WHEN o.ran_for IS NULL THEN j.started_at
                      ELSE greatest(coalesce(to_timestamp(o.at), greatest(o.ended, j.state_changed_at))
                                    - make_interval(secs => o.ran_for), j.created_at) END
-- The outcome's time: the worker's (`at`), or on the database's clock `ago` seconds before now,
-- the outcome having waited in the worker's batch (or out an outage) before this write; never
-- before the attempt's claim.
FROM (SELECT *, now() - make_interval(secs => u.ago) AS ended
      FROM unnest(%(ids)b::bigint[], %(worker_ids)b::text[], %(attempts)b::int[],
                  %(states)b::text[], %(results)b::text[], %(errors)b::text[],
                  %(ats)b::float8[], %(agos)b::float8[], %(delays)b::float8[],
                  %(refunds)b::int[], %(notes)b::text[], %(rescues)b::bool[],
                  %(expired)b::float8[], %(leaders)b::text[], %(finishes)b::bool[],
                  %(progresses)b::float8[], %(keeps_cancel)b::bool[], %(keeps_note)b::bool[],
                  %(ran_fors)b::float8[], array_fill('running'::text, ARRAY[%(count)s::int]))
           AS u(id, worker_id, attempt, state, result, error, at, ago, delay, refund, note,
                rescue, expired, leader, finishes, progress, keeps_cancel_request,
                keeps_requester_note, ran_for, was)) AS o
WHERE j.id = o.id AND j.state = o.was AND j.worker_id = o.worker_id
  AND j.attempt = o.attempt
  AND (NOT o.rescue OR j.lease_until < to_timestamp(o.expired))
  -- a rescue decided by a leader applies only while that leader's lease stands
  AND (o.leader IS NULL
       OR EXISTS (SELECT FROM {schema}.leaders AS l
                  WHERE l.holder = o.leader AND l.until >= now()))
RETURNING j.id, j.state

-- name: lock_rescued
-- Before rescues, in their transaction: a job whose row another session holds (a hung one, say)
-- is passed over, and tried again next round. A rescue never waits, so one stuck session cannot
-- hold back every rescue.
SELECT id FROM {schema}.jobs
WHERE id = ANY(%(ids)s::bigint[]) AND state = 'running'
FOR UPDATE SKIP LOCKED

-- name: cancel_requested_leftovers
-- Jobs asked to stop that were retried or handed back instead: they end cancelled.
UPDATE {schema}.jobs
SET state = 'cancelled', finished_at = coalesce(to_timestamp(%(now)s::float8), now()),
    cancel_requested = false, state_changed_at = coalesce(to_timestamp(%(now)s::float8), now()),
    note = 'cancelled'
WHERE id = ANY(%(ids)s::bigint[]) AND cancel_requested AND state IN ({left_states})

-- name: upsert_worker
INSERT INTO {schema}.workers (id, host, pid, queues, concurrency, started_at, last_beat, running)
VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s::json, %(concurrency)s,
        coalesce(to_timestamp(%(now)s::float8), now()),
        coalesce(to_timestamp(%(now)s::float8), now()), %(running)s::json)
ON CONFLICT (id) DO UPDATE SET last_beat = excluded.last_beat, running = excluded.running

-- name: extend_leases
-- The attempts still running under this worker get a new lease; the rest were taken from it.
-- A row locked right now (its outcome is being written, it is being cancelled) is passed over
-- rather than waited for — a wait here could deadlock with the worker's own outcome write —
-- and counted as still the worker's if it was when the statement began. The state comes with
-- each id, as in `complete`: a look-up per id.
WITH mine AS (
    SELECT j.id, j.attempt, j.cancel_requested, r.was FROM {schema}.jobs AS j
    JOIN unnest(%(ids)s::bigint[], %(attempts)s::int[],
                array_fill('running'::text, ARRAY[%(count)s::int])) AS r(id, attempt, was)
      ON j.id = r.id AND j.attempt = r.attempt AND j.state = r.was
    WHERE j.worker_id = %(worker_id)s
), locked AS (
    SELECT j.id FROM {schema}.jobs AS j JOIN mine ON j.id = mine.id AND j.state = mine.was
    WHERE j.worker_id = %(worker_id)s
    FOR UPDATE OF j SKIP LOCKED
), extended AS (
    UPDATE {schema}.jobs AS j
    SET lease_until = coalesce(to_timestamp(%(now)s::float8), now())
                      + make_interval(secs => %(lease)s)
    FROM locked WHERE j.id = locked.id
    RETURNING j.id
)
SELECT id, attempt, cancel_requested FROM mine
WHERE id IN (SELECT id FROM extended) OR id NOT IN (SELECT id FROM locked)

-- name: running_of_worker
-- What the store has running under a worker: the heartbeat compares it with what it runs, after
-- a claim of the worker failed (its answer may have been lost). Not at every beat: until vacuum
-- comes, this range of the index holds an entry for every job that ever ran.
SELECT id, attempt, cancel_requested FROM {schema}.jobs
WHERE state = 'running' AND worker_id = %(worker_id)s

-- name: delete_worker
DELETE FROM {schema}.workers WHERE id = %(id)s

-- name: prune_workers
DELETE FROM {schema}.workers
WHERE last_beat < coalesce(to_timestamp(%(now)s::float8), now()) - make_interval(secs => %(age)s)

-- name: find_expired
SELECT {job_columns} FROM {schema}.jobs AS j
WHERE state = 'running' AND lease_until < coalesce(to_timestamp(%(now)s::float8), now())
ORDER BY lease_until
LIMIT %(limit)s

-- name: take_lead
-- Take the named leadership or renew it: a lease on the server's clock. Anyone takes it once the
-- lease has run out, or at once when the session that holds it is gone (its leader died). Run on
-- the leader's own connection, whose server backend the row names. Always on the server's
-- clock (never a test's frozen one): a lease is about who is alive now.
INSERT INTO {schema}.leaders AS l (name, holder, until, pid)
VALUES (%(name)s, %(holder)s, now() + make_interval(secs => %(lease)s), pg_backend_pid())
ON CONFLICT (name) DO UPDATE
SET holder = excluded.holder, until = excluded.until, pid = excluded.pid
WHERE l.holder = excluded.holder
   OR l.until < now()
   OR NOT EXISTS (SELECT FROM pg_stat_activity AS a WHERE a.pid = l.pid)
RETURNING holder

-- name: resign
DELETE FROM {schema}.leaders WHERE name = %(name)s AND holder = %(holder)s

-- name: next_due_in
SELECT extract(epoch FROM min(run_at) - coalesce(to_timestamp(%(now)s::float8), now()))::float8
       AS due_in
FROM {schema}.jobs
WHERE state IN ({due_states})

-- name: next_due_in_queues
SELECT extract(epoch FROM min(m.at) - coalesce(to_timestamp(%(now)s::float8), now()))::float8
       AS due_in
FROM unnest(%(queues)s::text[]) AS q(name)
CROSS JOIN LATERAL (SELECT min(run_at) AS at FROM {schema}.jobs
                    WHERE queue = q.name AND state IN ({due_states})) AS m

-- name: get_job
SELECT {job_columns} FROM {schema}.jobs AS j WHERE id = %(id)s

-- name: list_jobs
SELECT {job_columns} FROM {schema}.jobs AS j
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(error_type)s::text IS NULL OR errors -> -1 ->> 'type' = %(error_type)s)
  AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s)
  AND (%(after_id)s::bigint IS NULL OR id > %(after_id)s)
  AND (%(contains)s::text IS NULL
       OR strpos(lower(task || ' ' || args::text || ' ' || kwargs::text), %(contains)s) > 0)
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
ORDER BY id DESC
LIMIT %(limit)s

-- name: list_jobs_in_states
SELECT {job_columns} FROM {schema}.jobs AS j
WHERE state = ANY(%(states)s::text[])
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(error_type)s::text IS NULL OR errors -> -1 ->> 'type' = %(error_type)s)
  AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s)
  AND (%(after_id)s::bigint IS NULL OR id > %(after_id)s)
  AND (%(contains)s::text IS NULL
       OR strpos(lower(task || ' ' || args::text || ' ' || kwargs::text), %(contains)s) > 0)
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
ORDER BY id DESC
LIMIT %(limit)s

-- name: job_history
SELECT job_id, extract(epoch FROM at)::float8 AS at, from_state, to_state, worker_id, note
FROM {schema}.job_history WHERE job_id = %(id)s ORDER BY id

-- name: noted
SELECT DISTINCT job_id FROM {schema}.job_history
WHERE job_id = ANY(%(ids)s::bigint[]) AND starts_with(note, %(prefix)s)

-- name: queue_stats
SELECT queue, state, count(*) AS n FROM {schema}.jobs GROUP BY state, queue

-- name: queue_stats_in_states
SELECT queue, state, count(*) AS n FROM {schema}.jobs
WHERE state = ANY(%(states)s::text[])
GROUP BY state, queue

-- name: dead_groups
-- The dead-letter queue by task and the type of the last error, biggest group first.
SELECT task, errors -> -1 ->> 'type' AS error_type, count(*) AS n, max(id) AS newest_id,
       extract(epoch FROM max(finished_at))::float8 AS newest_at
FROM {schema}.jobs
WHERE state = 'dead' AND finished_at IS NOT NULL
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
GROUP BY task, error_type
ORDER BY n DESC, task, error_type

-- name: finished_counts
-- Jobs finished since a moment, per queue, state and time bucket (an index range scan).
SELECT queue, state,
       floor(extract(epoch FROM finished_at) / %(bucket)s)::float8 * %(bucket)s AS bucket,
       count(*) AS n
FROM {schema}.jobs
WHERE state IN ({finished_states})
  AND finished_at >= to_timestamp(%(since)s::float8)
GROUP BY queue, state, bucket

-- name: queued_since
-- Per queue, since when its oldest queued job has been waiting.
SELECT queue, extract(epoch FROM min(state_changed_at))::float8 AS since FROM {schema}.jobs
WHERE state = 'queued' GROUP BY queue

-- name: list_workers
-- The heartbeat's age by the database's clock, so a reader on a skewed machine sees it right.
SELECT *, extract(epoch FROM now() - last_beat)::float8 AS beat_age
FROM {schema}.workers ORDER BY started_at, id

-- name: cancel_pending
UPDATE {schema}.jobs
SET state = 'cancelled', finished_at = coalesce(to_timestamp(%(now)s::float8), now()),
    state_changed_at = coalesce(to_timestamp(%(now)s::float8), now()), note = %(note)s
WHERE id = %(id)s AND state IN ({cancellable_states})

-- name: cancel_jobs
UPDATE {schema}.jobs
SET state = 'cancelled', finished_at = coalesce(to_timestamp(%(now)s::float8), now()),
    state_changed_at = coalesce(to_timestamp(%(now)s::float8), now()), note = %(note)s
WHERE state = ANY(%(states)s::text[])
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)

-- name: request_cancel
UPDATE {schema}.jobs SET cancel_requested = true, note = %(note)s
WHERE id = %(id)s AND state = 'running'

-- name: retry_jobs
UPDATE {schema}.jobs
SET state = 'queued', attempt = 0, run_at = coalesce(to_timestamp(%(now)s::float8), now()),
    started_at = NULL, finished_at = NULL, lease_until = NULL, worker_id = NULL,
    cancel_requested = false, progress = NULL, stage = NULL, result = NULL,
    state_changed_at = coalesce(to_timestamp(%(now)s::float8), now()), note = %(note)s
WHERE state = ANY(%(states)s::text[])
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  -- a job with a unique key comes back only if no unfinished job holds the key, and only the
  -- newest of the matching jobs with that key
  AND (unique_key IS NULL OR (
        NOT EXISTS (SELECT FROM {schema}.jobs AS h
                    WHERE h.unique_key = jobs.unique_key
                      AND h.state IN ({unfinished_states}))
        AND NOT EXISTS (SELECT FROM {schema}.jobs AS n
                        WHERE n.unique_key = jobs.unique_key
                          AND n.id > jobs.id
                          AND n.state = ANY(%(states)s::text[])
                          AND (%(ids)s::bigint[] IS NULL OR n.id = ANY(%(ids)s::bigint[]))
                          AND (%(queue)s::text IS NULL OR n.queue = %(queue)s)
                          AND (%(task)s::text IS NULL OR n.task = %(task)s))))
RETURNING id

-- name: purge
WITH gone AS (
    DELETE FROM {schema}.jobs
    WHERE state = ANY(%(states)s::text[])
      AND finished_at <= coalesce(to_timestamp(%(now)s::float8), now())
                         - make_interval(secs => %(age)s)
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(queue)s::text IS NULL OR queue = %(queue)s)
      AND (%(task)s::text IS NULL OR task = %(task)s)
    RETURNING id
), history AS (
    DELETE FROM {schema}.job_history WHERE job_id IN (SELECT id FROM gone)
)
SELECT count(*) AS n FROM gone

-- name: set_progress
-- The job keeps the latest report; each report is also a row for the event stream, and a
-- NOTIFY wakes its subscribers.
WITH c AS (SELECT coalesce(to_timestamp(%(now)s::float8), now()) AS now),
job AS (
    UPDATE {schema}.jobs
    SET progress = %(progress)s, stage = coalesce(%(stage)s, stage)
    WHERE id = %(id)s AND state = 'running' AND worker_id = %(worker_id)s
      AND attempt = %(attempt)s
    RETURNING id
), report AS (
    INSERT INTO {schema}.job_progress (job_id, at, progress, stage, message, worker_id)
    SELECT job.id, c.now, %(progress)s, %(stage)s, %(message)s, %(worker_id)s FROM job, c
    RETURNING id
), woken AS (
    SELECT pg_notify('{schema}_events', '') FROM report
)
SELECT count(*) AS updated FROM job WHERE (SELECT count(*) FROM woken) >= 0

-- name: event_cursor
SELECT (SELECT coalesce(max(id), 0) FROM {schema}.job_history) AS history,
       (SELECT coalesce(max(id), 0) FROM {schema}.job_progress) AS progress

-- name: history_events
-- With the job's times, for the wait and run time of an attempt that finished (see Event).
SELECT h.id, h.job_id, h.at, h.from_state, h.to_state, h.note, h.worker_id, j.queue, j.task,
       j.run_at, j.started_at, j.finished_at
FROM {schema}.job_history AS h LEFT JOIN {schema}.jobs AS j ON j.id = h.job_id
WHERE h.id > %(after)s
  AND (%(job_id)s::bigint IS NULL OR h.job_id = %(job_id)s)
  AND (%(queue)s::text IS NULL OR j.queue = %(queue)s)
ORDER BY h.id
LIMIT %(limit)s

-- name: progress_events
SELECT p.id, p.job_id, p.at, p.progress, p.stage, p.message, p.worker_id, j.queue, j.task
FROM {schema}.job_progress AS p LEFT JOIN {schema}.jobs AS j ON j.id = p.job_id
WHERE p.id > %(after)s
  AND (%(job_id)s::bigint IS NULL OR p.job_id = %(job_id)s)
  AND (%(queue)s::text IS NULL OR j.queue = %(queue)s)
ORDER BY p.id
LIMIT %(limit)s

-- name: prune_progress
DELETE FROM {schema}.job_progress
WHERE at < coalesce(to_timestamp(%(now)s::float8), now()) - make_interval(secs => %(age)s)

-- name: listen_events
LISTEN "{schema}_events"; LISTEN {channel}

-- name: lock_migrations
SELECT pg_advisory_xact_lock(hashtext(%(key)s))

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {schema}

-- name: list_tables
SELECT table_name AS name FROM information_schema.tables WHERE table_schema = %(schema)s

-- name: migrations_columns
SELECT column_name FROM information_schema.columns
WHERE table_schema = %(schema)s AND table_name = 'migrations'

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS {schema}.migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: applied_migrations
SELECT version FROM {schema}.migrations ORDER BY version

-- name: record_migration
INSERT INTO {schema}.migrations (version, name) VALUES (%(version)s, %(name)s)

-- name: forget_migration
DELETE FROM {schema}.migrations WHERE version = %(version)s

-- name: listen
LISTEN {channel}

-- name: session_settings
-- On every new connection: no statement runs longer than this (the client cuts the connection
-- a little later, if the server cannot even do that).
SET statement_timeout = {statement_timeout_ms}

-- name: no_statement_timeout
-- Migrations may rewrite big tables: for the rest of their transaction, no limit.
SET LOCAL statement_timeout = 0

-- name: pause_queue
INSERT INTO {schema}.queues (name, paused_at)
VALUES (%(name)s, coalesce(to_timestamp(%(now)s::float8), now()))
ON CONFLICT (name) DO UPDATE SET paused_at = excluded.paused_at
WHERE queues.paused_at IS NULL

-- name: resume_queue
-- Wakes idle workers: the queue's waiting jobs are runnable again.
WITH resumed AS (
    UPDATE {schema}.queues SET paused_at = NULL
    WHERE name = %(name)s AND paused_at IS NOT NULL
    RETURNING name
)
SELECT pg_notify('{schema}_jobs', name) FROM resumed

-- name: paused_queues
SELECT name FROM {schema}.queues WHERE paused_at IS NOT NULL ORDER BY name

-- name: record_tick
-- A tick fired by a leader is recorded only while that leader's lease stands.
INSERT INTO {schema}.cron_ticks (name, tick, fired_at)
SELECT %(name)s, to_timestamp(%(tick)s::float8), coalesce(to_timestamp(%(now)s::float8), now())
WHERE %(leader)s::text IS NULL
   OR EXISTS (SELECT FROM {schema}.leaders WHERE holder = %(leader)s AND until >= now())
ON CONFLICT DO NOTHING

-- name: set_tick_job
UPDATE {schema}.cron_ticks SET job_id = %(job_id)s
WHERE name = %(name)s AND tick = to_timestamp(%(tick)s::float8)

-- name: periodic_ticks
-- Per entry: the latest tick dealt with, and the latest that stored a job, with its state.
SELECT t.name, extract(epoch FROM t.tick)::float8 AS tick,
       extract(epoch FROM f.tick)::float8 AS fired_tick, f.job_id, j.state AS job_state
FROM (SELECT name, max(tick) AS tick FROM {schema}.cron_ticks GROUP BY name) AS t
LEFT JOIN LATERAL (
    SELECT tick, job_id FROM {schema}.cron_ticks
    WHERE name = t.name AND job_id IS NOT NULL
    ORDER BY tick DESC LIMIT 1
) AS f ON true
LEFT JOIN {schema}.jobs AS j ON j.id = f.job_id
ORDER BY t.name

-- name: prune_ticks
-- Old ticks go; each entry's latest stays, to carry on from.
DELETE FROM {schema}.cron_ticks AS c
WHERE tick < coalesce(to_timestamp(%(now)s::float8), now()) - make_interval(secs => %(age)s)
  AND tick < (SELECT max(tick) FROM {schema}.cron_ticks AS latest WHERE latest.name = c.name)

-- name: lock_dependencies
-- The jobs new jobs will depend on, locked until the enqueue commits (see enqueue_plan).
SELECT id, dependency_depth FROM {schema}.jobs WHERE id = ANY(%(ids)s::bigint[]) FOR SHARE

-- name: insert_dependencies
INSERT INTO {schema}.job_dependencies (job_id, depends_on)
SELECT * FROM unnest(%(job_ids)s::bigint[], %(depends_on)s::bigint[])
ON CONFLICT DO NOTHING

-- name: release_waiting
-- Dependencies that already finished release (or cancel) the new waiting jobs at once.
SELECT {schema}.release_waiting(%(ids)s::bigint[]) IS NULL AS done

-- name: get_jobs
SELECT {job_columns} FROM {schema}.jobs AS j WHERE id = ANY(%(ids)s::bigint[])

-- name: ensure_circuit
INSERT INTO {schema}.circuits (name) VALUES (%(name)s) ON CONFLICT (name) DO NOTHING

-- name: lock_circuit
-- The circuit's row, locked for the rest of the transaction (none if it has none), and the
-- time to date the change with.
WITH c AS (SELECT coalesce(to_timestamp(%(now)s::float8), now()) AS now),
locked AS (SELECT * FROM {schema}.circuits WHERE name = %(name)s FOR UPDATE)
SELECT extract(epoch FROM c.now)::float8 AS now, locked.*
FROM c LEFT JOIN locked ON true

-- name: put_circuit
UPDATE {schema}.circuits
SET state = %(state)s, failures = %(failures)s, opened_at = to_timestamp(%(opened_at)s::float8),
    reason = %(reason)s, probed_at = to_timestamp(%(probed_at)s::float8),
    half_open_jobs = %(half_open_jobs)s
WHERE name = %(name)s

-- name: held_by_circuit
-- The jobs behind a circuit still to run (and, with running, those running now).
SELECT count(*) AS held FROM {schema}.jobs
WHERE circuit = %(name)s
  AND (state IN ({to_run_states}) OR (%(running)s AND state = 'running'))

-- name: wake_held
-- Held jobs may run again: wake idle workers of their queues.
SELECT pg_notify('{schema}_jobs', left(string_agg(DISTINCT queue, ','), 7000))
FROM {schema}.jobs WHERE state = 'queued' AND circuit = %(name)s
HAVING count(*) > 0

-- name: log_circuit
INSERT INTO {schema}.circuit_log (name, at, event, reason, held, open_for)
VALUES (%(name)s, to_timestamp(%(at)s::float8), %(event)s, %(reason)s, %(held)s, %(open_for)s)

-- name: record_probe
UPDATE {schema}.circuits SET probed_at = coalesce(to_timestamp(%(now)s::float8), now())
WHERE name = %(name)s

-- name: list_circuits
SELECT c.*, (SELECT count(*) FROM {schema}.jobs
             WHERE circuit = c.name
               AND state IN ({held_states})) AS held
FROM {schema}.circuits AS c
ORDER BY name

-- name: circuit_log
SELECT * FROM {schema}.circuit_log
WHERE (%(name)s::text IS NULL OR name = %(name)s)
ORDER BY id DESC
LIMIT %(limit)s

-- name: claim_alert
-- Take the right to send an alert: only if the key was not sent within the period.
WITH c AS (SELECT coalesce(to_timestamp(%(now)s::float8), now()) AS now)
INSERT INTO {schema}.alerts (key, sent_at) SELECT %(key)s, c.now FROM c
ON CONFLICT (key) DO UPDATE SET sent_at = excluded.sent_at
WHERE alerts.sent_at <= excluded.sent_at - make_interval(secs => %(every)s)

-- name: backlog
-- A queue's queued jobs, and how long the oldest of them has been waiting.
SELECT count(*) AS depth,
       extract(epoch FROM coalesce(to_timestamp(%(now)s::float8), now())
                          - min(state_changed_at))::float8 AS age
FROM {schema}.jobs WHERE queue = %(queue)s AND state = 'queued'

-- name: forget_revoked_sessions
DELETE FROM {schema}.revoked_sessions WHERE until < coalesce(to_timestamp(%(now)s::float8), now())

-- name: revoke_session
INSERT INTO {schema}.revoked_sessions (nonce, until)
VALUES (%(nonce)s, to_timestamp(%(until)s::float8))
ON CONFLICT (nonce) DO NOTHING

-- name: session_revoked
SELECT 1 AS revoked FROM {schema}.revoked_sessions WHERE nonce = %(nonce)s
