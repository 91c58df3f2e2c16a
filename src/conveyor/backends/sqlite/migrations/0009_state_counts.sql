-- migrate:up
-- Counts per state, then queue: the dashboard counts the few unfinished jobs often and the many
-- finished ones seldom, each an index range. (Same number of indexes as before.)
CREATE INDEX conveyor_jobs_state_queue ON conveyor_jobs (state, queue);
DROP INDEX conveyor_jobs_queue_state;

-- migrate:down
CREATE INDEX conveyor_jobs_queue_state ON conveyor_jobs (queue, state);
DROP INDEX conveyor_jobs_state_queue;
