-- migrate:up
-- Periodic jobs: one row per (entry, tick) the leader has dealt with — fired (with the job it
-- stored) or skipped — so no tick is fired twice, by a second leader or after a restart.
CREATE TABLE {schema}.cron_ticks (
    name     text        NOT NULL,
    tick     timestamptz NOT NULL,
    job_id   bigint,
    fired_at timestamptz NOT NULL,
    PRIMARY KEY (name, tick)
);

-- migrate:down
DROP TABLE {schema}.cron_ticks;
