-- The raw psycopg loop: the same claim/complete work as conveyor's PostgreSQL backend, on a
-- table of the same shape, with nothing else (no history rows, no NOTIFY, no heartbeats, no
-- leader, no Python layer beyond psycopg). `{schema}` is the workload's own schema.

-- name: create_schema
CREATE SCHEMA {schema}

-- name: drop_schema
DROP SCHEMA IF EXISTS {schema} CASCADE

-- name: create_table
CREATE TABLE {schema}.jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue            text        NOT NULL,
    task             text        NOT NULL,
    args             json        NOT NULL,
    kwargs           json        NOT NULL,
    meta             json        NOT NULL DEFAULT '{}',
    priority         smallint    NOT NULL,
    state            text        NOT NULL,
    attempt          integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL,
    run_at           timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    lease_until      timestamptz,
    worker_id        text,
    progress         real,
    stage            text,
    result           json,
    errors           jsonb       NOT NULL DEFAULT '[]',
    cancel_requested boolean     NOT NULL DEFAULT false,
    state_changed_at timestamptz NOT NULL,
    note             text
)

-- name: create_runnable_index
CREATE INDEX jobs_runnable ON {schema}.jobs (priority, run_at, id) WHERE state = 'queued'

-- name: insert_one
INSERT INTO {schema}.jobs (queue, task, args, kwargs, priority, state, max_attempts, run_at,
                           created_at, state_changed_at)
VALUES ('default', %(task)s, %(args)s::json, '{}', 5, 'queued', 3, now(), now(), now())
RETURNING id

-- name: insert_many
-- A batch as arrays, one statement: no parameter limit, one round trip.
INSERT INTO {schema}.jobs (queue, task, args, kwargs, priority, state, max_attempts, run_at,
                           created_at, state_changed_at)
SELECT 'default', %(task)s, a.args::json, '{}', 5, 'queued', 3, now(), now(), now()
FROM unnest(%(args)s::text[]) AS a(args)

-- name: claim
WITH picked AS (
    SELECT id FROM {schema}.jobs
    WHERE state = 'queued'
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.jobs AS j
SET state = 'running', attempt = j.attempt + 1, worker_id = %(worker_id)s, started_at = now(),
    lease_until = now() + interval '30 seconds', state_changed_at = now()
FROM picked
WHERE j.id = picked.id
RETURNING j.id, j.task, j.args, j.kwargs

-- name: complete
UPDATE {schema}.jobs AS j
SET state = 'succeeded', result = 'null', finished_at = now(), lease_until = NULL,
    state_changed_at = now()
FROM unnest(%(ids)s::bigint[]) AS o(id)
WHERE j.id = o.id AND j.state = 'running' AND j.worker_id = %(worker_id)s

-- name: count_by_state
SELECT state, count(*) FROM {schema}.jobs GROUP BY state
