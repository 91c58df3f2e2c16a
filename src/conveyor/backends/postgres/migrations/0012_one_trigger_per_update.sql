-- migrate:up
-- One statement-level trigger on updates of jobs instead of two: the history's (with the
-- wake-ups) now also releases the dependents of jobs the statement left finished. Each trigger
-- that fires costs every update statement a share of its own, whatever it then finds: the
-- second one cost a claim and a completion of 50 jobs about 7 µs a job each, with no
-- dependency anywhere. What each part does, and in which order, is unchanged.
DROP TRIGGER jobs_release_dependents ON {schema}.jobs;
DROP FUNCTION {schema}.release_dependents();

CREATE OR REPLACE FUNCTION {schema}.record_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    queues text;
    dependents bigint[];
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
    -- The dependents of the jobs this statement left finished (one that already was is
    -- harmless: release_waiting changes only waiting jobs), each looked up in the index on
    -- depends_on; the dependents it cancels set this trigger off in turn.
    SELECT array_agg(DISTINCT d.job_id) INTO dependents
    FROM updated AS n
    CROSS JOIN LATERAL (SELECT job_id FROM {schema}.job_dependencies
                        WHERE depends_on = n.id) AS d
    WHERE n.state IN ('succeeded', 'dead', 'cancelled');
    IF dependents IS NOT NULL THEN
        PERFORM {schema}.release_waiting(dependents);
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

CREATE FUNCTION {schema}.release_dependents() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    dependents bigint[];
BEGIN
    SELECT array_agg(DISTINCT d.job_id) INTO dependents
    FROM updated AS n
    CROSS JOIN LATERAL (SELECT job_id FROM {schema}.job_dependencies
                        WHERE depends_on = n.id) AS d
    WHERE n.state IN ('succeeded', 'dead', 'cancelled');
    IF dependents IS NOT NULL THEN
        PERFORM {schema}.release_waiting(dependents);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_release_dependents AFTER UPDATE ON {schema}.jobs
    REFERENCING NEW TABLE AS updated
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.release_dependents();
