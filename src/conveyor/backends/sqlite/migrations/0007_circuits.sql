-- migrate:up
-- Circuits: a job of a task behind a circuit names it; while the circuit is open its queued
-- jobs are held (no claim takes them), and while it is half-open only a few run at once.
ALTER TABLE conveyor_jobs ADD COLUMN circuit TEXT;
CREATE INDEX conveyor_jobs_queued_circuit ON conveyor_jobs (circuit, priority, run_at, id)
    WHERE state = 'queued' AND circuit IS NOT NULL;
-- the jobs a circuit holds (or is about to), counted for its records
CREATE INDEX conveyor_jobs_circuit_state ON conveyor_jobs (circuit, state)
    WHERE circuit IS NOT NULL;

CREATE TABLE conveyor_circuits (
    name           TEXT PRIMARY KEY,
    state          TEXT NOT NULL DEFAULT 'closed'
                   CHECK (state IN ('closed', 'open', 'half_open')),
    -- downstream failures in a row
    failures       INTEGER NOT NULL DEFAULT 0,
    opened_at      REAL,
    reason         TEXT,
    probed_at      REAL,
    half_open_jobs INTEGER NOT NULL DEFAULT 1
) WITHOUT ROWID;

-- Every open, half-open and close: when, why, how many jobs were held, how long it was open.
CREATE TABLE conveyor_circuit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    name     TEXT NOT NULL,
    at       REAL NOT NULL,
    event    TEXT NOT NULL,
    reason   TEXT,
    held     INTEGER NOT NULL DEFAULT 0,
    open_for REAL
);
CREATE INDEX conveyor_circuit_log_name ON conveyor_circuit_log (name, id);

-- When each alert key was last sent: a key is sent at most once per period, cluster-wide.
CREATE TABLE conveyor_alerts (
    key     TEXT PRIMARY KEY,
    sent_at REAL NOT NULL
) WITHOUT ROWID;

-- migrate:down
DROP TABLE conveyor_alerts;
DROP TABLE conveyor_circuit_log;
DROP TABLE conveyor_circuits;
DROP INDEX conveyor_jobs_circuit_state;
DROP INDEX conveyor_jobs_queued_circuit;
ALTER TABLE conveyor_jobs DROP COLUMN circuit;
