-- migrate:up
-- Each progress report names the worker that sent it, for the event stream.
ALTER TABLE conveyor_job_progress ADD COLUMN worker_id TEXT;

-- migrate:down
ALTER TABLE conveyor_job_progress DROP COLUMN worker_id;
