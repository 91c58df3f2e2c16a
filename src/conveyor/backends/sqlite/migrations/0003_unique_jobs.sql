-- migrate:up
-- Unique jobs: at most one unfinished job per key, enforced by the index itself; the second
-- index finds a key's finished jobs (unique_for). Jobs without a key are in neither.
ALTER TABLE conveyor_jobs ADD COLUMN unique_key TEXT;
CREATE UNIQUE INDEX conveyor_jobs_unique_unfinished ON conveyor_jobs (unique_key)
    WHERE unique_key IS NOT NULL
      AND state IN ('waiting', 'scheduled', 'queued', 'running', 'retrying');
CREATE INDEX conveyor_jobs_unique ON conveyor_jobs (unique_key, finished_at)
    WHERE unique_key IS NOT NULL;

-- migrate:down
DROP INDEX conveyor_jobs_unique;
DROP INDEX conveyor_jobs_unique_unfinished;
ALTER TABLE conveyor_jobs DROP COLUMN unique_key;
