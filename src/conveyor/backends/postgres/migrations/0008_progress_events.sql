-- migrate:up
-- Progress reports, one row each (throttled by the worker), for the event stream; the job row
-- keeps the latest. State changes come from the history. The leader forgets reports after a
-- while: events are for those watching now.
CREATE TABLE {schema}.job_progress (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id   bigint NOT NULL,
    at       timestamptz NOT NULL,
    progress real NOT NULL,
    stage    text,
    message  text
);
CREATE INDEX job_progress_at ON {schema}.job_progress (at);

-- As before, and also: every statement that changes states tells event subscribers (on a
-- channel of their own) that the history grew.
CREATE OR REPLACE FUNCTION {schema}.record_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    queues text;
BEGIN
    INSERT INTO {schema}.job_history (job_id, at, from_state, to_state, worker_id, note)
    SELECT n.id, n.state_changed_at, o.state, n.state, n.worker_id, n.note
    FROM updated n JOIN previous o ON o.id = n.id
    WHERE o.state <> n.state;
    IF FOUND THEN
        PERFORM pg_notify('{schema}_events', '');
    END IF;
    SELECT string_agg(DISTINCT n.queue, ',') INTO queues
    FROM updated n JOIN previous o ON o.id = n.id
    WHERE (n.state = 'queued' AND o.state <> 'queued')
       OR (o.state = 'running' AND n.state <> 'running'
           AND (n.concurrency_key IS NOT NULL
                OR n.queue IN (SELECT name FROM {schema}.queues WHERE concurrency IS NOT NULL)));
    IF queues IS NOT NULL THEN
        PERFORM pg_notify('{schema}_jobs', left(queues, 7000));
    END IF;
    RETURN NULL;
END
$$;

-- migrate:down
CREATE OR REPLACE FUNCTION {schema}.record_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    queues text;
BEGIN
    INSERT INTO {schema}.job_history (job_id, at, from_state, to_state, worker_id, note)
    SELECT n.id, n.state_changed_at, o.state, n.state, n.worker_id, n.note
    FROM updated n JOIN previous o ON o.id = n.id
    WHERE o.state <> n.state;
    SELECT string_agg(DISTINCT n.queue, ',') INTO queues
    FROM updated n JOIN previous o ON o.id = n.id
    WHERE (n.state = 'queued' AND o.state <> 'queued')
       OR (o.state = 'running' AND n.state <> 'running'
           AND (n.concurrency_key IS NOT NULL
                OR n.queue IN (SELECT name FROM {schema}.queues WHERE concurrency IS NOT NULL)));
    IF queues IS NOT NULL THEN
        PERFORM pg_notify('{schema}_jobs', left(queues, 7000));
    END IF;
    RETURN NULL;
END
$$;
DROP TABLE {schema}.job_progress;
