-- migrate:up
-- Progress reports, one row each (throttled by the worker), for the event stream; the job row
-- keeps the latest. State changes come from the history. The leader forgets reports after a
-- while: events are for those watching now.
CREATE TABLE conveyor_job_progress (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   INTEGER NOT NULL,
    at       REAL NOT NULL,
    progress REAL NOT NULL,
    stage    TEXT,
    message  TEXT
);
CREATE INDEX conveyor_job_progress_at ON conveyor_job_progress (at);

-- migrate:down
DROP TABLE conveyor_job_progress;
