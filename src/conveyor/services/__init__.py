"""Background loops that run inside every worker process."""
