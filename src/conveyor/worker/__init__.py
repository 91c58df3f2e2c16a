"""The worker: claims jobs, runs them, writes their outcomes, keeps its leases alive."""

from conveyor.worker.worker import Worker

__all__ = ["Worker"]
