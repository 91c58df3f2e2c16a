-- migrate:up
-- Unique jobs: at most one unfinished job per key, enforced by the index itself (enqueue
-- inserts with ON CONFLICT DO NOTHING on it); the second index finds a key's finished jobs
-- (unique_for). Jobs without a key are in neither.
ALTER TABLE {schema}.jobs ADD COLUMN unique_key text;
CREATE UNIQUE INDEX jobs_unique_unfinished ON {schema}.jobs (unique_key)
    WHERE unique_key IS NOT NULL
      AND state IN ('waiting', 'scheduled', 'queued', 'running', 'retrying');
CREATE INDEX jobs_unique ON {schema}.jobs (unique_key, finished_at)
    WHERE unique_key IS NOT NULL;

-- migrate:down
DROP INDEX {schema}.jobs_unique;
DROP INDEX {schema}.jobs_unique_unfinished;
ALTER TABLE {schema}.jobs DROP COLUMN unique_key;
