-- migrate:up
-- Rate and concurrency limits. A job of a task with a limit carries its buckets: at most
-- concurrency_max jobs of one concurrency_key run at once; at most rate_max jobs of one rate_key
-- start in any rate_period seconds. A queue's own limit is its row's concurrency.
ALTER TABLE {schema}.jobs
    ADD COLUMN concurrency_key text,
    ADD COLUMN concurrency_max integer CHECK (concurrency_max >= 1),
    ADD COLUMN rate_key text,
    ADD COLUMN rate_max integer CHECK (rate_max >= 1),
    ADD COLUMN rate_period float8 CHECK (rate_period > 0);
ALTER TABLE {schema}.queues ADD COLUMN concurrency integer CHECK (concurrency >= 1);

-- The plain claim takes only jobs without buckets; jobs with buckets are claimed by the
-- limited claim, per bucket, from the indexes below.
DROP INDEX {schema}.jobs_runnable;
DROP INDEX {schema}.jobs_runnable_queue;
CREATE INDEX jobs_runnable ON {schema}.jobs (priority, run_at, id)
    WHERE state = 'queued' AND concurrency_key IS NULL AND rate_key IS NULL;
CREATE INDEX jobs_runnable_queue ON {schema}.jobs (queue, priority, run_at, id)
    WHERE state = 'queued' AND concurrency_key IS NULL AND rate_key IS NULL;
CREATE INDEX jobs_queued_concurrency ON {schema}.jobs (concurrency_key, priority, run_at, id)
    WHERE state = 'queued' AND concurrency_key IS NOT NULL;
CREATE INDEX jobs_queued_rate ON {schema}.jobs (rate_key, priority, run_at, id)
    WHERE state = 'queued' AND rate_key IS NOT NULL;
CREATE INDEX jobs_running_concurrency ON {schema}.jobs (concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;

-- One row per start of a rate-limited job, kept until its window has passed.
CREATE TABLE {schema}.rate_starts (
    key   text        NOT NULL,
    until timestamptz NOT NULL
);
CREATE INDEX rate_starts_key ON {schema}.rate_starts (key, until);
CREATE INDEX rate_starts_until ON {schema}.rate_starts (until);

-- As before, and also: a job with a limit that stops running frees a slot, so idle workers
-- are woken for its queue.
CREATE OR REPLACE FUNCTION {schema}.record_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    queues text;
BEGIN
    INSERT INTO {schema}.job_history (job_id, at, from_state, to_state, worker_id, note)
    SELECT n.id, n.state_changed_at, o.state, n.state, n.worker_id, n.note
    FROM updated n JOIN previous o ON o.id = n.id
    WHERE o.state <> n.state;
    SELECT string_agg(DISTINCT n.queue, ',') INTO queues
    FROM updated n JOIN previous o ON o.id = n.id
    WHERE (n.state = 'queued' AND o.state <> 'queued')
       OR (o.state = 'running' AND n.state <> 'running'
           AND (n.concurrency_key IS NOT NULL
                OR n.queue IN (SELECT name FROM {schema}.queues WHERE concurrency IS NOT NULL)));
    IF queues IS NOT NULL THEN
        PERFORM pg_notify('{schema}_jobs', left(queues, 7000));
    END IF;
    RETURN NULL;
END
$$;

-- migrate:down
CREATE OR REPLACE FUNCTION {schema}.record_updated() RETURNS trigger LANGUAGE plpgsql AS $$
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
DROP TABLE {schema}.rate_starts;
DROP INDEX {schema}.jobs_running_concurrency;
DROP INDEX {schema}.jobs_queued_rate;
DROP INDEX {schema}.jobs_queued_concurrency;
DROP INDEX {schema}.jobs_runnable;
DROP INDEX {schema}.jobs_runnable_queue;
CREATE INDEX jobs_runnable ON {schema}.jobs (priority, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_runnable_queue ON {schema}.jobs (queue, priority, run_at, id)
    WHERE state = 'queued';
ALTER TABLE {schema}.queues DROP COLUMN concurrency;
ALTER TABLE {schema}.jobs
    DROP COLUMN rate_period, DROP COLUMN rate_max, DROP COLUMN rate_key,
    DROP COLUMN concurrency_max, DROP COLUMN concurrency_key;
