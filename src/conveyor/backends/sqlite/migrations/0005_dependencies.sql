-- migrate:up
-- Dependencies: a job enqueued with depends_on waits until every job it depends on has
-- succeeded, then becomes queued (or scheduled, if its run_at is still ahead). If one of them
-- ends dead or cancelled, it is cancelled with a note naming that job — unless its
-- on_dependency_failure is 'run': then it runs once they have all finished, whatever the end.
ALTER TABLE conveyor_jobs ADD COLUMN on_dependency_failure TEXT;
-- how many jobs deep its chain of dependencies goes (0: none); enqueue caps it
ALTER TABLE conveyor_jobs ADD COLUMN dependency_depth INTEGER NOT NULL DEFAULT 0;

CREATE TABLE conveyor_job_dependencies (
    job_id     INTEGER NOT NULL,
    depends_on INTEGER NOT NULL,
    PRIMARY KEY (job_id, depends_on)
) WITHOUT ROWID;
CREATE INDEX conveyor_job_dependencies_on ON conveyor_job_dependencies (depends_on, job_id);

-- The one place the rule lives: touching a dependency row looks at its waiting job again.
-- Enqueue touches the rows it inserts; a job that finishes touches the rows that name it (the
-- next trigger), and a dependent it cancels does the same in turn (recursive_triggers is on).
-- The change is dated when its last dependency changed (or when it was enqueued, if later).
CREATE TRIGGER conveyor_dependency_touched AFTER UPDATE ON conveyor_job_dependencies
BEGIN
    UPDATE conveyor_jobs
    SET state = CASE
            WHEN failed.note IS NOT NULL AND on_dependency_failure IS NULL THEN 'cancelled'
            WHEN run_at > changed.at THEN 'scheduled'
            ELSE 'queued' END,
        finished_at = CASE WHEN failed.note IS NOT NULL AND on_dependency_failure IS NULL
                           THEN changed.at END,
        state_changed_at = changed.at,
        note = CASE WHEN on_dependency_failure IS NULL THEN failed.note END
    FROM (SELECT (SELECT 'dependency ' || p.id || ' is ' || p.state
                  FROM conveyor_job_dependencies AS d
                  JOIN conveyor_jobs AS p ON p.id = d.depends_on
                  WHERE d.job_id = NEW.job_id AND p.state IN ('dead', 'cancelled')
                  ORDER BY p.id LIMIT 1) AS note) AS failed,
         (SELECT max(w.created_at, coalesce(max(p.state_changed_at), w.created_at)) AS at
          FROM conveyor_jobs AS w
          LEFT JOIN conveyor_job_dependencies AS d ON d.job_id = w.id
          LEFT JOIN conveyor_jobs AS p ON p.id = d.depends_on
          WHERE w.id = NEW.job_id) AS changed
    WHERE id = NEW.job_id AND state = 'waiting'
      AND ((failed.note IS NOT NULL AND on_dependency_failure IS NULL)
           OR NOT EXISTS (SELECT 1 FROM conveyor_job_dependencies AS d
                          JOIN conveyor_jobs AS p ON p.id = d.depends_on
                          WHERE d.job_id = NEW.job_id
                            AND p.state NOT IN ('succeeded', 'dead', 'cancelled')));
END;

CREATE TRIGGER conveyor_jobs_finished AFTER UPDATE OF state ON conveyor_jobs
WHEN NEW.state IN ('succeeded', 'dead', 'cancelled') AND OLD.state <> NEW.state
BEGIN
    UPDATE conveyor_job_dependencies SET depends_on = depends_on WHERE depends_on = NEW.id;
END;

-- migrate:down
DROP TRIGGER conveyor_jobs_finished;
DROP TRIGGER conveyor_dependency_touched;
DROP TABLE conveyor_job_dependencies;
ALTER TABLE conveyor_jobs DROP COLUMN dependency_depth;
ALTER TABLE conveyor_jobs DROP COLUMN on_dependency_failure;
