-- The raw loop: the same claim/complete work as conveyor's SQLite backend, on a table of the
-- same shape, with nothing else (no history rows, no heartbeats, no leader, no Python layer).

-- name: create_table
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT    NOT NULL,
    task             TEXT    NOT NULL,
    args             TEXT    NOT NULL,
    kwargs           TEXT    NOT NULL,
    meta             TEXT    NOT NULL DEFAULT '{}',
    priority         INTEGER NOT NULL,
    state            TEXT    NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    run_at           REAL    NOT NULL,
    created_at       REAL    NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    lease_until      REAL,
    worker_id        TEXT,
    progress         REAL,
    stage            TEXT,
    result           TEXT,
    errors           TEXT    NOT NULL DEFAULT '[]',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    state_changed_at REAL    NOT NULL,
    note             TEXT
)

-- name: create_runnable_index
CREATE INDEX jobs_runnable ON jobs (priority, run_at, id) WHERE state = 'queued'

-- name: insert
INSERT INTO jobs (queue, task, args, kwargs, priority, state, max_attempts, run_at, created_at,
                  state_changed_at)
VALUES ('default', :task, :args, '{}', 5, 'queued', 3, :now, :now, :now)

-- name: claim
UPDATE jobs
SET state = 'running', attempt = attempt + 1, worker_id = :worker_id, started_at = :now,
    lease_until = :lease_until, state_changed_at = :now
WHERE id IN (SELECT id FROM jobs
             WHERE state = 'queued'
             ORDER BY priority, run_at, id
             LIMIT :limit)
RETURNING id, task, args, kwargs

-- name: complete
UPDATE jobs
SET state = 'succeeded', result = 'null', finished_at = :now, lease_until = NULL,
    state_changed_at = :now
WHERE id = :id AND state = 'running' AND worker_id = :worker_id

-- name: count_by_state
SELECT state, count(*) FROM jobs GROUP BY state
