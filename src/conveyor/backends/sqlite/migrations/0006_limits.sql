-- migrate:up
-- Rate and concurrency limits. A job of a task with a limit carries its buckets: at most
-- concurrency_max jobs of one concurrency_key run at once; at most rate_max jobs of one rate_key
-- start in any rate_period seconds. A queue's own limit is its row's concurrency.
ALTER TABLE conveyor_jobs ADD COLUMN concurrency_key TEXT;
ALTER TABLE conveyor_jobs ADD COLUMN concurrency_max INTEGER;
ALTER TABLE conveyor_jobs ADD COLUMN rate_key TEXT;
ALTER TABLE conveyor_jobs ADD COLUMN rate_max INTEGER;
ALTER TABLE conveyor_jobs ADD COLUMN rate_period REAL;
ALTER TABLE conveyor_queues ADD COLUMN concurrency INTEGER;

-- The plain claim takes only jobs without buckets; jobs with buckets are claimed by the
-- limited claim, per bucket, from the indexes below.
DROP INDEX conveyor_jobs_runnable;
DROP INDEX conveyor_jobs_runnable_queue;
CREATE INDEX conveyor_jobs_runnable ON conveyor_jobs (priority, run_at, id)
    WHERE state = 'queued' AND concurrency_key IS NULL AND rate_key IS NULL;
CREATE INDEX conveyor_jobs_runnable_queue ON conveyor_jobs (queue, priority, run_at, id)
    WHERE state = 'queued' AND concurrency_key IS NULL AND rate_key IS NULL;
CREATE INDEX conveyor_jobs_queued_concurrency
    ON conveyor_jobs (concurrency_key, priority, run_at, id)
    WHERE state = 'queued' AND concurrency_key IS NOT NULL;
CREATE INDEX conveyor_jobs_queued_rate ON conveyor_jobs (rate_key, priority, run_at, id)
    WHERE state = 'queued' AND rate_key IS NOT NULL;
CREATE INDEX conveyor_jobs_running_concurrency ON conveyor_jobs (concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;

-- One row per start of a rate-limited job, kept until its window has passed.
CREATE TABLE conveyor_rate_starts (
    key   TEXT NOT NULL,
    until REAL NOT NULL
);
CREATE INDEX conveyor_rate_starts_key ON conveyor_rate_starts (key, until);
CREATE INDEX conveyor_rate_starts_until ON conveyor_rate_starts (until);

-- migrate:down
DROP TABLE conveyor_rate_starts;
DROP INDEX conveyor_jobs_running_concurrency;
DROP INDEX conveyor_jobs_queued_rate;
DROP INDEX conveyor_jobs_queued_concurrency;
DROP INDEX conveyor_jobs_runnable;
DROP INDEX conveyor_jobs_runnable_queue;
CREATE INDEX conveyor_jobs_runnable ON conveyor_jobs (priority, run_at, id) WHERE state = 'queued';
CREATE INDEX conveyor_jobs_runnable_queue ON conveyor_jobs (queue, priority, run_at, id)
    WHERE state = 'queued';
ALTER TABLE conveyor_queues DROP COLUMN concurrency;
ALTER TABLE conveyor_jobs DROP COLUMN rate_period;
ALTER TABLE conveyor_jobs DROP COLUMN rate_max;
ALTER TABLE conveyor_jobs DROP COLUMN rate_key;
ALTER TABLE conveyor_jobs DROP COLUMN concurrency_max;
ALTER TABLE conveyor_jobs DROP COLUMN concurrency_key;
