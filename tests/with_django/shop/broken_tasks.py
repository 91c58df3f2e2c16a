"""A task module that cannot be imported: a worker meeting a job of it fails the job as an
unknown task and logs why, and goes on (shop/tests_backend.py)."""

raise RuntimeError("this module is broken on purpose")
