-- migrate:up
-- Counts per state, then queue: the dashboard counts the few unfinished jobs often and the many
-- finished ones seldom, each an index range. (Same number of indexes as before.)
CREATE INDEX jobs_state_queue ON {schema}.jobs (state, queue);
DROP INDEX {schema}.jobs_queue_state;

-- migrate:down
CREATE INDEX jobs_queue_state ON {schema}.jobs (queue, state);
DROP INDEX {schema}.jobs_state_queue;
