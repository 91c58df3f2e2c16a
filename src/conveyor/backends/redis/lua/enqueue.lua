-- Store jobs, all or none. ARGV[3]: how many; then 19 fields a job (as `_enqueue_args` in backend.py sends them):
-- queue, task, args, kwargs, meta, priority, max_attempts, run_at, created_at, unique_key,
-- unique_since, on_dependency_failure, concurrency_key, concurrency_max, rate_key, rate_max,
-- rate_period, circuit, depends_on ("12,15,#0": stored ids, and #i the i-th job of this call),
-- and then each job's depth. On the caller's clock, created_at and run_at move to the store's.
-- Returns NOW and, per job, its id or, for a job deduplicated or waiting, {id, deduplicated,
-- its columns}.
return enqueue_jobs(3)
