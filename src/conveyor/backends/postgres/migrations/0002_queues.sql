-- migrate:up
-- Queues with a state of their own: a paused queue starts nothing new until resumed. A queue
-- has a row here only once something was set on it.
CREATE TABLE {schema}.queues (
    name      text PRIMARY KEY,
    paused_at timestamptz
);

-- migrate:down
DROP TABLE {schema}.queues;
