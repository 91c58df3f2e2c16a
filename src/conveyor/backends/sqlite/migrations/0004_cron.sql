-- migrate:up
-- Periodic jobs: one row per (entry, tick) the leader has dealt with — fired (with the job it
-- stored) or skipped — so no tick is fired twice, by a second leader or after a restart.
CREATE TABLE conveyor_cron_ticks (
    name     TEXT    NOT NULL,
    tick     REAL    NOT NULL,
    job_id   INTEGER,
    fired_at REAL    NOT NULL,
    PRIMARY KEY (name, tick)
) WITHOUT ROWID;

-- migrate:down
DROP TABLE conveyor_cron_ticks;
