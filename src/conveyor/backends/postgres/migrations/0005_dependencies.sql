-- migrate:up
-- Dependencies: a job enqueued with depends_on waits until every job it depends on has
-- succeeded, then becomes queued (or scheduled, if its run_at is still ahead). If one of them
-- ends dead or cancelled, it is cancelled with a note naming that job — unless its
-- on_dependency_failure is 'run': then it runs once they have all finished, whatever the end.
ALTER TABLE {schema}.jobs ADD COLUMN on_dependency_failure text;
-- how many jobs deep its chain of dependencies goes (0: none); enqueue caps it
ALTER TABLE {schema}.jobs ADD COLUMN dependency_depth integer NOT NULL DEFAULT 0;

CREATE TABLE {schema}.job_dependencies (
    job_id     bigint NOT NULL,
    depends_on bigint NOT NULL,
    PRIMARY KEY (job_id, depends_on)
);
CREATE INDEX job_dependencies_on ON {schema}.job_dependencies (depends_on, job_id);

-- The one place the rule lives: look at these waiting jobs again. Enqueue calls it for the
-- jobs it inserts; the trigger below for the dependents of jobs that finished, and the
-- dependents it cancels set the trigger off in turn. The change is dated when the job's last
-- dependency changed (or when it was enqueued, if later).
CREATE FUNCTION {schema}.release_waiting(ids bigint[]) RETURNS void LANGUAGE sql AS $$
    UPDATE {schema}.jobs AS w
    SET state = CASE
            WHEN v.failed IS NOT NULL AND w.on_dependency_failure IS NULL THEN 'cancelled'
            WHEN w.run_at > greatest(w.created_at, v.changed) THEN 'scheduled'
            ELSE 'queued' END,
        finished_at = CASE WHEN v.failed IS NOT NULL AND w.on_dependency_failure IS NULL
                           THEN greatest(w.created_at, v.changed) END,
        state_changed_at = greatest(w.created_at, v.changed),
        note = CASE WHEN w.on_dependency_failure IS NULL THEN v.failed END
    FROM (
        SELECT d.job_id,
               min(CASE WHEN p.state IN ('dead', 'cancelled')
                        THEN 'dependency ' || p.id || ' is ' || p.state END) AS failed,
               coalesce(bool_or(p.state NOT IN ('succeeded', 'dead', 'cancelled')), false)
                   AS unfinished,
               max(p.state_changed_at) AS changed
        FROM {schema}.job_dependencies AS d
        LEFT JOIN {schema}.jobs AS p ON p.id = d.depends_on
        WHERE d.job_id = ANY(ids)
        GROUP BY d.job_id
    ) AS v
    WHERE w.id = v.job_id AND w.state = 'waiting'
      AND ((v.failed IS NOT NULL AND w.on_dependency_failure IS NULL) OR NOT v.unfinished)
$$;

-- It looks only at the jobs a statement left finished (one that already was is harmless:
-- release_waiting changes only waiting jobs), each looked up in the index on depends_on.
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

-- migrate:down
DROP TRIGGER jobs_release_dependents ON {schema}.jobs;
DROP FUNCTION {schema}.release_dependents();
DROP FUNCTION {schema}.release_waiting(bigint[]);
DROP TABLE {schema}.job_dependencies;
ALTER TABLE {schema}.jobs DROP COLUMN dependency_depth;
ALTER TABLE {schema}.jobs DROP COLUMN on_dependency_failure;
