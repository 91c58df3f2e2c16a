-- migrate:up
CREATE TABLE conveyor_jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT    NOT NULL,
    task             TEXT    NOT NULL,
    args             TEXT    NOT NULL,
    kwargs           TEXT    NOT NULL,
    meta             TEXT    NOT NULL DEFAULT '{}',
    priority         INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 10),
    state            TEXT    NOT NULL CHECK (state IN ('waiting', 'scheduled', 'queued', 'running',
                                                       'retrying', 'succeeded', 'dead', 'cancelled')),
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
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
    -- when and why the job last changed state; copied into the history by the triggers below
    state_changed_at REAL    NOT NULL,
    note             TEXT
);

-- the claim: runnable jobs in claim order
CREATE INDEX conveyor_jobs_runnable ON conveyor_jobs (priority, run_at, id) WHERE state = 'queued';
CREATE INDEX conveyor_jobs_runnable_queue ON conveyor_jobs (queue, priority, run_at, id)
    WHERE state = 'queued';
-- promotion of scheduled and retrying jobs that are due
CREATE INDEX conveyor_jobs_due ON conveyor_jobs (run_at) WHERE state IN ('scheduled', 'retrying');
CREATE INDEX conveyor_jobs_due_queue ON conveyor_jobs (queue, run_at)
    WHERE state IN ('scheduled', 'retrying');
-- the rescuer
CREATE INDEX conveyor_jobs_leased ON conveyor_jobs (lease_until) WHERE state = 'running';
-- listings by state (newest first), per-queue counts, purges
CREATE INDEX conveyor_jobs_state ON conveyor_jobs (state, id);
CREATE INDEX conveyor_jobs_queue_state ON conveyor_jobs (queue, state);
CREATE INDEX conveyor_jobs_finished ON conveyor_jobs (state, finished_at)
    WHERE finished_at IS NOT NULL;

CREATE TABLE conveyor_job_history (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL,
    at         REAL    NOT NULL,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    worker_id  TEXT,
    note       TEXT
);
CREATE INDEX conveyor_job_history_job ON conveyor_job_history (job_id, id);

-- Every change of state lands in the history, whichever statement made it. (The enqueue itself
-- is recorded by the insert's own statement: one set-based insert is much cheaper than a
-- trigger per row.)
CREATE TRIGGER conveyor_jobs_history_update AFTER UPDATE OF state ON conveyor_jobs
WHEN OLD.state <> NEW.state
BEGIN
    INSERT INTO conveyor_job_history (job_id, at, from_state, to_state, worker_id, note)
    VALUES (NEW.id, NEW.state_changed_at, OLD.state, NEW.state, NEW.worker_id, NEW.note);
END;

CREATE TABLE conveyor_workers (
    id          TEXT    PRIMARY KEY,
    host        TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    queues      TEXT,
    concurrency INTEGER NOT NULL,
    started_at  REAL    NOT NULL,
    last_beat   REAL    NOT NULL,
    running     TEXT    NOT NULL DEFAULT '[]'
);

CREATE TABLE conveyor_leaders (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until  REAL NOT NULL
);

-- migrate:down
DROP TABLE conveyor_leaders;
DROP TABLE conveyor_workers;
DROP TABLE conveyor_job_history;
DROP TABLE conveyor_jobs;
