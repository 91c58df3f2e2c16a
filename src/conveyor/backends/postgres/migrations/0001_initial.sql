-- migrate:up
CREATE TABLE {schema}.jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue            text        NOT NULL,
    task             text        NOT NULL,
    args             json        NOT NULL,
    kwargs           json        NOT NULL,
    meta             json        NOT NULL DEFAULT '{}',
    priority         smallint    NOT NULL CHECK (priority BETWEEN 1 AND 10),
    state            text        NOT NULL CHECK (state IN ('waiting', 'scheduled', 'queued',
                                     'running', 'retrying', 'succeeded', 'dead', 'cancelled')),
    attempt          integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL CHECK (max_attempts >= 1),
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
    -- when and why the job last changed state; copied into the history by the trigger below
    state_changed_at timestamptz NOT NULL,
    note             text
);

-- Jobs churn: vacuum and analyze the table long before the default 20 % of dead rows, and
-- leave room on each page for updated row versions.
ALTER TABLE {schema}.jobs SET (
    fillfactor = 85,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);

-- the claim: runnable jobs in claim order, overall and per queue
CREATE INDEX jobs_runnable ON {schema}.jobs (priority, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_runnable_queue ON {schema}.jobs (queue, priority, run_at, id)
    WHERE state = 'queued';
-- promotion of scheduled and retrying jobs that are due
CREATE INDEX jobs_due ON {schema}.jobs (run_at) WHERE state IN ('scheduled', 'retrying');
CREATE INDEX jobs_due_queue ON {schema}.jobs (queue, run_at)
    WHERE state IN ('scheduled', 'retrying');
-- the rescuer
CREATE INDEX jobs_leased ON {schema}.jobs (lease_until) WHERE state = 'running';
-- listings by state (newest first), per-queue counts, purges
CREATE INDEX jobs_state ON {schema}.jobs (state, id);
CREATE INDEX jobs_queue_state ON {schema}.jobs (queue, state);
CREATE INDEX jobs_finished ON {schema}.jobs (state, finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE {schema}.job_history (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     bigint      NOT NULL,
    at         timestamptz NOT NULL,
    from_state text,
    to_state   text        NOT NULL,
    worker_id  text,
    note       text
);
CREATE INDEX job_history_job ON {schema}.job_history (job_id, id);

-- Every change of state lands in the history, whichever statement made it: a statement-level
-- trigger with transition tables, one set-based insert per statement. The same trigger wakes
-- idle workers: one NOTIFY per statement that makes jobs runnable, carrying the queue names
-- (PostgreSQL folds identical notifications of one transaction into one). New jobs are only
-- ever inserted by the enqueue statements (queries.sql), which write their first history entry
-- and NOTIFY themselves: cheaper than a trigger on the hottest statement.
CREATE FUNCTION {schema}.record_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    queues text;
BEGIN
    INSERT INTO {schema}.job_history (job_id, at, from_state, to_state, worker_id, note)
    SELECT n.id, n.state_changed_at, o.state, n.state, n.worker_id, n.note
    FROM updated n JOIN previous o ON o.id = n.id
    WHERE o.state <> n.state;
    SELECT string_agg(DISTINCT n.queue, ',') INTO queues
    FROM updated n JOIN previous o ON o.id = n.id
    WHERE n.state = 'queued' AND o.state <> 'queued';
    IF queues IS NOT NULL THEN
        PERFORM pg_notify('{schema}_jobs', left(queues, 7000));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_history_update AFTER UPDATE ON {schema}.jobs
    REFERENCING OLD TABLE AS previous NEW TABLE AS updated
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.record_updated();

CREATE TABLE {schema}.workers (
    id          text        PRIMARY KEY,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    queues      json,
    concurrency integer     NOT NULL,
    started_at  timestamptz NOT NULL,
    last_beat   timestamptz NOT NULL,
    running     json        NOT NULL DEFAULT '[]'
);

-- migrate:down
DROP TABLE {schema}.workers;
DROP TABLE {schema}.job_history;
DROP TABLE {schema}.jobs;
DROP FUNCTION {schema}.record_updated();
