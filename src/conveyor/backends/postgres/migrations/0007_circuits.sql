-- migrate:up
-- Circuits: a job of a task behind a circuit names it; while the circuit is open its queued
-- jobs are held (no claim takes them), and while it is half-open only a few run at once.
ALTER TABLE {schema}.jobs ADD COLUMN circuit text;
CREATE INDEX jobs_queued_circuit ON {schema}.jobs (circuit, priority, run_at, id)
    WHERE state = 'queued' AND circuit IS NOT NULL;
-- the jobs a circuit holds (or is about to), counted for its records
CREATE INDEX jobs_circuit_state ON {schema}.jobs (circuit, state) WHERE circuit IS NOT NULL;

CREATE TABLE {schema}.circuits (
    name           text PRIMARY KEY,
    state          text NOT NULL DEFAULT 'closed'
                   CHECK (state IN ('closed', 'open', 'half_open')),
    -- downstream failures in a row
    failures       integer NOT NULL DEFAULT 0,
    opened_at      timestamptz,
    reason         text,
    probed_at      timestamptz,
    half_open_jobs integer NOT NULL DEFAULT 1
);

-- Every open, half-open and close: when, why, how many jobs were held, how long it was open.
CREATE TABLE {schema}.circuit_log (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name     text NOT NULL,
    at       timestamptz NOT NULL,
    event    text NOT NULL,
    reason   text,
    held     integer NOT NULL DEFAULT 0,
    open_for float8
);
CREATE INDEX circuit_log_name ON {schema}.circuit_log (name, id);

-- When each alert key was last sent: a key is sent at most once per period, cluster-wide.
CREATE TABLE {schema}.alerts (
    key     text PRIMARY KEY,
    sent_at timestamptz NOT NULL
);

-- migrate:down
DROP TABLE {schema}.alerts;
DROP TABLE {schema}.circuit_log;
DROP TABLE {schema}.circuits;
DROP INDEX {schema}.jobs_circuit_state;
DROP INDEX {schema}.jobs_queued_circuit;
ALTER TABLE {schema}.jobs DROP COLUMN circuit;
