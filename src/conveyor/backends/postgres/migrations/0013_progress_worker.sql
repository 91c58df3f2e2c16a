-- migrate:up
-- Each progress report names the worker that sent it, for the event stream.
ALTER TABLE {schema}.job_progress ADD COLUMN worker_id text;

-- migrate:down
ALTER TABLE {schema}.job_progress DROP COLUMN worker_id;
