-- migrate:up
-- Queues with a state of their own: a paused queue starts nothing new until resumed. A queue
-- has a row here only once something was set on it.
CREATE TABLE conveyor_queues (
    name      TEXT PRIMARY KEY,
    paused_at REAL
) WITHOUT ROWID;

-- migrate:down
DROP TABLE conveyor_queues;
